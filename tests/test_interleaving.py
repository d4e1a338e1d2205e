"""Deterministic races: a competing write forced between a compare-and-swap's read and its
conditional write (the `tasks.store.between_read_and_write` hook), for every user of
`Store.update_json` (champion promotion, alert claims and settlements, the drift event
marker), on a local store (file lock) and on the real local S3 endpoint (conditional PUT).
Threads that merely start together rarely hit that window; this hits it every time.

The validated layer's day manifests are left out here: they are being replaced by a Delta
table (issue 19)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

import tasks.store as store_module
from schemas.config import DatasetConfig, parse_config
from tasks.nightly.alert import ledger_key, send_alerts
from tasks.nightly.drift import claim_event, last_event_key
from tasks.store import Store
from tasks.versions import ChampionConflict, VersionRef, champion_key, read_champion, set_champion
from tests.s3_server import s3_endpoint
from tests.test_alerts import NIGHT, Receiver, scores
from tests.tiny import tiny_config

BUCKET = "nightowl-interleave"


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with s3_endpoint(BUCKET) as url:
        yield url


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> Store:
    if request.param == "local":
        return Store(f"file://{tmp_path}/store")
    url = request.getfixturevalue("s3_url")
    return Store(f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}", {"client_kwargs": {"endpoint_url": url}})


@pytest.fixture
def cfg(tmp_path: Path) -> DatasetConfig:
    return parse_config(tiny_config(tmp_path, drift={"cooldown_hours": 24.0}))


class Interleave:
    """Runs `competitor` once, when the `at`-th read-then-write of `key` is between its read
    and its conditional write; `reads` counts the hook's calls on that key (a retry after the
    forced conflict is a second one)."""

    def __init__(self, key: str, competitor: Callable[[], object], at: int = 1) -> None:
        self.key, self.competitor, self.at = key, competitor, at
        self.reads = 0
        self.fired = False

    def __call__(self, store: Store, key: str) -> None:
        if key != self.key or self.fired:
            return
        self.reads += 1
        if self.reads == self.at:
            self.fired = True
            self.competitor()  # its own update_json passes here too: `fired` lets it through


@pytest.fixture
def interleave(monkeypatch) -> Callable[[str, Callable[[], object], int], Interleave]:
    def install(key: str, competitor: Callable[[], object], at: int = 1) -> Interleave:
        hook = Interleave(key, competitor, at)
        monkeypatch.setattr(store_module, "between_read_and_write", hook)
        return hook
    return install


def test_a_promotion_between_read_and_write_is_not_lost(store: Store, interleave):
    ours, theirs = VersionRef("d", "pca", "ours"), VersionRef("d", "lstm_ae", "theirs")
    hook = interleave(champion_key("d"), lambda: set_champion(store, theirs, "pr_auc", 0.4))
    set_champion(store, ours, "pr_auc", 0.5)
    assert hook.fired
    pointer = read_champion(store, "d")
    assert (pointer["version"], pointer["generation"]) == ("ours", 2)
    assert pointer["previous"] == {"family": "lstm_ae", "version": "theirs"}


def test_an_expected_generation_that_moved_between_read_and_write_is_refused(
        store: Store, interleave):
    hook = interleave(champion_key("d"),
                      lambda: set_champion(store, VersionRef("d", "pca", "theirs"), "pr_auc", 0.4))
    with pytest.raises(ChampionConflict, match="generation is 1, expected 0"):
        set_champion(store, VersionRef("d", "pca", "ours"), "pr_auc", 0.5, expected_generation=0)
    assert hook.fired and read_champion(store, "d")["version"] == "theirs"


def test_a_run_claiming_between_our_read_and_write_alerts_each_segment_once(
        store: Store, cfg: DatasetConfig, interleave):
    frame = scores({"m1": [0, 1, 1, 0, 1], "m2": [1, 0, 0, 0, 0]})  # 3 segments
    receiver = Receiver()
    try:
        competing: list = []
        interleave(ledger_key(cfg), lambda: competing.append(
            send_alerts(store, cfg, NIGHT, frame, receiver.url)))
        ours = send_alerts(store, cfg, NIGHT, frame, receiver.url)
    finally:
        receiver.close()
    assert competing[0].sent == 3 and ours.sent == 0
    assert len(receiver.bodies) == 3
    assert {e["status"] for e in store.read_json(ledger_key(cfg)).values()} == {"sent"}


def test_a_claim_between_our_settlements_read_and_write_is_kept(
        store: Store, cfg: DatasetConfig, interleave):
    """Our first settlement (2nd ledger update) re-reads after another run's claim landed:
    both runs' segments end up sent, none lost, none twice."""
    receiver = Receiver()
    try:
        interleave(ledger_key(cfg), lambda: send_alerts(
            store, cfg, NIGHT, scores({"m9": [1, 1, 0]}), receiver.url), at=2)
        ours = send_alerts(store, cfg, NIGHT, scores({"m1": [1, 0, 1]}), receiver.url)
    finally:
        receiver.close()
    ledger = store.read_json(ledger_key(cfg))
    assert ours.sent == 2 and len(receiver.bodies) == 3
    assert sorted(sid.split("@")[0] for sid in ledger) == ["m1", "m1", "m9"]
    assert {e["status"] for e in ledger.values()} == {"sent"}


def test_a_drift_event_claimed_between_read_and_write_is_emitted_once(
        store: Store, cfg: DatasetConfig, interleave):
    now = datetime.now(UTC)
    theirs: list = []
    hook = interleave(last_event_key(cfg), lambda: theirs.append(
        claim_event(store, cfg, date(2026, 1, 10), now)))
    token, _ = claim_event(store, cfg, date(2026, 1, 9), now)
    assert hook.fired and theirs[0][0] is not None
    assert token is None  # inside the cooldown of the event claimed under our feet
    marker = store.read_json(last_event_key(cfg))
    assert (marker["claim"], marker["date"]) == (theirs[0][0], "2026-01-10")
