"""Run the `nightowl` command line in this process and SIGKILL the process at a stage boundary.

    python tests/kill_at.py STAGE nightowl-arguments...

STAGE is a task name (the process dies right after that task completed, as if the
machine was lost between two stages) or `epoch:K` (right after the checkpoint of
training epoch K was written, i.e. mid-training). The kill is a real `kill -9` of this
process: no cleanup, no `finally`, no flushed buffers. Nothing else is changed: the
tasks run as shipped, with one completion hook added to the chosen one.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Any

STAGES = {
    "ingest-source": ("tasks.data.ingest", "ingest_source"),
    "scale": ("tasks.data.prepare", "scale_dataset"),
    "window": ("tasks.data.prepare", "window_dataset"),
    "train": ("tasks.training.train", "train_family"),
    "calibrate": ("tasks.training.calibrate", "calibrate_candidate"),
    "export": ("tasks.training.export", "export_candidate"),
    "report": ("tasks.training.training_report", "report_candidate"),
    "register": ("tasks.training.register", "register_candidate"),
    "choose-champion": ("tasks.training.register", "choose_champion"),
    "ingest-night": ("tasks.data.ingest", "ingest_night"),
    "plan-night": ("tasks.nightly.score", "plan_night"),
    "score-shard": ("tasks.nightly.score", "score_shard"),
    "commit-night": ("tasks.nightly.score", "commit_night"),
    "drift-check": ("tasks.nightly.drift", "check_drift"),
    "alert": ("tasks.nightly.alert", "alert_night"),
}


def die(*_: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(stage: str) -> None:
    """Add the kill to the chosen stage before any flow module imports it by name."""
    if stage.startswith("epoch:"):
        epoch = int(stage.split(":", 1)[1])
        train = importlib.import_module("tasks.training.train")
        real_fit = train.fit

        def fit(*args: Any, on_epoch_end: Any = None, **kwargs: Any) -> Any:
            def hook(index: int, checkpoint: Any) -> None:
                on_epoch_end(index, checkpoint)  # the checkpoint is written first
                if index == epoch:
                    die()
            return real_fit(*args, on_epoch_end=hook, **kwargs)

        train.fit = fit
        return
    module, name = STAGES[stage]
    mod = importlib.import_module(module)
    setattr(mod, name, getattr(mod, name).with_options(on_completion=[die]))


if __name__ == "__main__":
    # What the CLI sets before Prefect loads; arming imports Prefect first, so set it here.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    arm(sys.argv[1])
    from flows.cli import app

    app(sys.argv[2:], prog_name="nightowl")
