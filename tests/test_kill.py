"""kill -9 at every stage boundary of train and nightly, and concurrent nightly runs, as
separate `nightowl` processes (slow: `make test-all`).

The train chain: one run id, each run SIGKILLed right after the next stage (and once
mid-training, after an epoch's checkpoint), each rerun resuming what the last left, then
one run to the end; its champion's weights are byte-identical to an uninterrupted run's.
The nightly chain does the same for a night; then two runs of another night start at the
same moment. Throughout: no row lost, no duplicate key, no alert twice, one drift event
per cooldown, and neither the webhook URL nor the planted credential in anything
written (store, process output, Prefect's database and logs).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import polars as pl
import pytest

from schemas.config import load_config, parse_config
from tasks.data import ingest, layer
from tasks.data.synthetic import materialize
from tasks.nightly.drift import last_event_key
from tasks.nightly.score import read_scores
from tasks.store import Store
from tasks.training.train import FIT, candidate_key
from tasks.versions import WEIGHTS, champion_ref, read_champion
from tests.test_alerts import Receiver
from tests.tiny import NIGHTS, tiny_config, write_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SECRET = f"planted-aws-secret-{uuid.uuid4().hex}"
TRAIN_STAGES = ["ingest-source", "scale", "window", "epoch:1", "train", "calibrate", "export",
                "report", "register", "choose-champion"]
NIGHT_STAGES = ["ingest-night", "plan-night", "score-shard", "commit-night", "drift-check",
                "alert"]


class World:
    """A config, its store, a webhook receiver and the environment every process gets."""

    def __init__(self, root: Path) -> None:
        self.hook = hook = Receiver()
        data = tiny_config(root, training={"epochs": 6, "patience": 6},
                           drift={"ks_threshold": 1e-6, "cooldown_hours": 24.0})
        materialize(parse_config(data).source.synthetic, data["source"]["path"])
        self.root, self.config = root, write_config(root, data)
        self.cfg = load_config(self.config)
        self.store = Store(self.cfg.store.root)
        self.outputs: list[str] = []
        self.homes: list[Path] = []
        self.logs: dict[int, Path] = {}
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "AWS_SECRET_ACCESS_KEY": SECRET,
                    "NIGHTOWL_ALERT_WEBHOOK_URL": hook.url,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false"}
        self.env.pop("PREFECT_API_URL", None)

    def start(self, *args: str, kill_at: str | None = None) -> subprocess.Popen:
        home = Path(tempfile.mkdtemp(prefix="nightowl-kill-home-"))
        self.homes.append(home)
        cmd = ([sys.executable, str(REPO / "tests" / "kill_at.py"), kill_at] if kill_at
               else [sys.executable, "-m", "flows.cli"]) + [*args, "-c", self.config]
        # Output to a file, not a pipe: the ephemeral API server of a killed run would keep
        # a pipe open forever.
        with open(home / "output.log", "wb") as out:
            proc = subprocess.Popen(cmd, cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                    env={**self.env, "PREFECT_HOME": str(home)},
                                    start_new_session=True)
        self.logs[proc.pid] = home / "output.log"
        return proc

    def finish(self, proc: subprocess.Popen) -> int:
        code = proc.wait(timeout=600)
        with suppress(ProcessLookupError):  # the ephemeral API server left by a killed run
            os.killpg(proc.pid, signal.SIGKILL)
        self.outputs.append(self.logs[proc.pid].read_text(errors="replace"))
        return code

    def run(self, *args: str, kill_at: str | None = None) -> int:
        return self.finish(self.start(*args, kill_at=kill_at))

    def check_layer(self) -> pl.DataFrame:
        rows = layer.load_validated(self.store, self.cfg)
        assert rows.select("entity", "timestamp").is_duplicated().sum() == 0
        return rows

    def written(self) -> bytes:
        files = [p for base in [self.root, *self.homes] for p in base.rglob("*") if p.is_file()
                 and "raw" not in p.parts]
        return b"".join(p.read_bytes() for p in files) + "".join(self.outputs).encode()


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> Iterator[tuple[World, World]]:
    """The world killed over and over, and a reference that runs undisturbed."""
    chain, reference = (World(tmp_path_factory.mktemp(n)) for n in ("chain", "reference"))
    yield chain, reference
    for w in (chain, reference):
        w.hook.close()
        for home in w.homes:
            shutil.rmtree(home, ignore_errors=True)


def champion_weights(world: World) -> bytes:
    pointer = read_champion(world.store, "tiny")
    return world.store.read_bytes(f"{champion_ref(pointer).key}/{WEIGHTS}")


def test_train_killed_at_every_stage_boundary_resumes_to_the_same_model(worlds):
    chain, reference = worlds
    assert reference.run("train", "--run-id", "reference") == 0, reference.outputs[-1][-3000:]
    rows = reference.check_layer()

    for stage in TRAIN_STAGES:
        assert chain.run("train", "--run-id", "chain", kill_at=stage) == -signal.SIGKILL, \
            chain.outputs[-1][-3000:]
        chain.check_layer()
        if stage == "epoch:1":
            assert chain.store.exists(f"{candidate_key(chain.cfg, 'chain', 'dense_ae')}/"
                                      "checkpoint.safetensors")
        if stage == "train":  # this run started from the checkpoint the last one left
            fit = chain.store.read_json(f"{candidate_key(chain.cfg, 'chain', 'dense_ae')}/{FIT}")
            assert fit["resumed_from_epoch"] == 1
    assert chain.run("train", "--run-id", "chain") == 0

    assert chain.check_layer().equals(rows)  # no row lost, none twice
    assert champion_weights(chain) == champion_weights(reference)
    assert read_champion(chain.store, "tiny")["generation"] == 2  # killed after promoting once


def test_nightly_killed_at_every_stage_boundary_then_rerun(worlds):
    chain, reference = worlds
    hook = chain.hook
    night = NIGHTS[0]
    assert reference.run("score", night.isoformat()) == 0
    for stage in NIGHT_STAGES:
        assert chain.run("score", night.isoformat(), kill_at=stage) == -signal.SIGKILL, \
            chain.outputs[-1][-3000:]
        chain.check_layer()
    posted_by_chain = len(hook.bodies)
    assert chain.run("score", night.isoformat()) == 0

    ours = read_scores(chain.store, chain.cfg, night)
    theirs = read_scores(reference.store, reference.cfg, night)
    assert ours.drop("model_version").equals(theirs.drop("model_version"))
    assert len(hook.bodies) == posted_by_chain  # the rerun after the alert stage sent nothing
    ids = [b["blocks"][1]["elements"][0]["text"] for b in hook.bodies]
    assert len(ids) == len(set(ids))  # no segment alerted twice
    assert len(ids) == len(reference.hook.bodies)  # and none missed
    marker = chain.store.read_json(last_event_key(chain.cfg))
    assert marker["event_id"]  # one event, emitted by the run killed after drift-check
    report = chain.store.read_json(f"drift/tiny/date={night.isoformat()}/report.json")
    assert report["event"] == "suppressed (cooldown)"


def test_concurrent_nightly_runs_of_the_same_night(worlds):
    chain, _ = worlds
    hook = chain.hook
    night = NIGHTS[1]
    raw = Path(chain.cfg.source.path).parent
    shutil.copy(raw / f"{night.isoformat()}.csv", raw / f"{night.isoformat()}-resend.csv")
    posted = len(hook.bodies)
    procs = [chain.start("score", night.isoformat()) for _ in range(2)]
    assert [chain.finish(p) for p in procs] == [0, 0]

    rows = chain.check_layer()
    day = rows.filter(pl.col("timestamp").dt.date() == night)
    assert day.height == 48  # the night's rows, once, although delivered twice and run twice
    scores = read_scores(chain.store, chain.cfg, night)
    assert scores.height == 48
    new = hook.bodies[posted:]
    ids = [b["blocks"][1]["elements"][0]["text"] for b in new]
    assert len(ids) == len(set(ids))  # each of tonight's segments alerted once
    batches = ingest.read_ledger(chain.store, chain.cfg,
                                 f"file://{raw}/{night.isoformat()}-resend.csv")
    assert batches is not None and batches.outcome.duplicates == 48


def test_nothing_secret_was_written_by_any_process(worlds):
    for world in worlds:
        written = world.written()
        assert len(world.outputs) >= 2  # the runs above happened
        assert SECRET.encode() not in written
        assert world.hook.secret.encode() not in written
