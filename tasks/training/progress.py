"""Live training progress in the Prefect UI: one progress artifact per family of a run.

Why: with eight families on a fleet a training run takes long, and a task that only says
"Running" leaves an operator guessing. `train-<ds>-<family>-progress` shows the percentage
(epochs done / configured), the last train and holdout loss, the best holdout so far and
an ETA, updated as the engine reports each epoch (throttled; see tasks.ui.LiveProgress).
"""

from __future__ import annotations

from models.engine import EpochProgress, FitResult
from schemas.config import DatasetConfig
from tasks.common import artifact_key
from tasks.ui import LiveProgress, duration


def progress_key(cfg: DatasetConfig, family: str) -> str:
    return artifact_key("train", cfg.name, family, "progress")


def describe_epoch(p: EpochProgress) -> str:
    """One line for the progress bar: where the fit is and how long it may still take."""
    best = (f" (best {p.best_holdout:.4g} at epoch {p.best_epoch + 1})"
            if p.best_epoch >= 0 else "")
    return (f"{p.model}: epoch {p.epoch + 1}/{p.epochs} · train loss {p.train_loss:.4g} · "
            f"holdout {p.holdout_loss:.4g}{best} · {duration(p.elapsed_s)} elapsed · "
            f"ETA ≤ {duration(p.eta_s)}")


def describe_fit(family: str, result: FitResult, epochs: int) -> str:
    """The bar's last line: how the fit ended."""
    if result.epochs_run == 0:
        return f"{family}: fitted in closed form in {duration(result.seconds)}"
    stopped = " (early stop)" if result.epochs_run < epochs else ""
    return (f"{family}: done, {result.epochs_run}/{epochs} epochs{stopped} in "
            f"{duration(result.seconds)} · kept epoch {result.best_epoch + 1}, holdout loss "
            f"{result.best_holdout:.4g} · {result.samples_per_s:,.0f} windows/s")


class FamilyProgress:
    """The progress artifact of one family's fit: created at 0 %, moved by each epoch."""

    def __init__(self, cfg: DatasetConfig, family: str, epochs: int) -> None:
        # A fleet's scopes share the key (one series per family, not one per entity); the
        # text names the entity or group.
        family = family if cfg.group is None else f"{family} [{cfg.group}]"
        self.family, self.epochs, self.started = family, epochs, False
        self.bar = LiveProgress(progress_key(cfg, family),
                                f"{family}: preparing {epochs} epochs of training")

    def epoch(self, p: EpochProgress) -> None:
        first, self.started = not self.started, True  # the first epoch shows (resumed too)
        self.bar.update(p.percent, describe_epoch(p), force=first)

    def done(self, result: FitResult) -> None:
        self.bar.update(100.0, describe_fit(self.family, result, self.epochs), force=True)

    def failed(self, err: BaseException) -> None:
        self.bar.update(self.bar.percent, f"{self.family}: failed ({type(err).__name__})", force=True)
