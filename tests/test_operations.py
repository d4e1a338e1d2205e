"""Decisions that must not be lost or doubled when runs overlap: champion changes (train and
retrain), the drift event's cooldown, and promotion of a challenger against an existing
champion. Real flow runs under the session harness, a real local store, real threads."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.config import load_config, parse_config
from tasks.common import store_for
from tasks.data.synthetic import materialize
from tasks.nightly.drift import check_drift, last_event_key
from tasks.nightly.score import commit_night, plan_night, score_shard
from tasks.training.promote import promote_if_better, rolling_splits, with_splits
from tasks.training.register import Candidate, choose_champion
from tasks.versions import VersionRef, read_champion, set_champion
from tests.tiny import NIGHTS, tiny_config, write_config


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory) -> tuple[str, dict[str, Any]]:
    """One tiny trained champion for this module's decisions (~10 s)."""
    import torch

    from flows.train import train_flow

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("operations")
    data = tiny_config(root, drift={"ks_threshold": 1e-6, "cooldown_hours": 24.0})
    materialize(parse_config(data).source.synthetic, data["source"]["path"])
    config = write_config(root, data)
    return config, train_flow(config)


def candidates_of(result: dict[str, Any], **metrics: float) -> list[Candidate]:
    """The run's registered candidates, optionally with their metrics overridden."""
    return [Candidate(VersionRef(result["dataset"], c["family"], c["version"]),
                      {**c["metrics"], **metrics}, c["threshold"]["threshold"],
                      c["threshold"]["method"], 0.0) for c in result["candidates"]]


def test_train_reports_a_lost_race_instead_of_overwriting(trained, monkeypatch) -> None:
    """Retraining promotes while a manual train is running: train keeps that champion."""
    import flows.candidates
    from flows.train import train_flow
    from tasks.training.train import train_family

    config, first = trained
    cfg = load_config(config)
    store = store_for(cfg)
    other = VersionRef("tiny", "dense_ae", first["champion"]["version"])

    def retraining_promotes_meanwhile(*_: Any) -> None:
        set_champion(store, other, "pr_auc", 0.99, details={"promoted_by": "retrain"})

    monkeypatch.setattr(flows.candidates, "train_family",
                        train_family.with_options(on_running=[retraining_promotes_meanwhile]))
    before = read_champion(store, "tiny")["generation"]
    result = train_flow(config)
    pointer = read_champion(store, "tiny")
    assert pointer["generation"] == before + 1  # only the concurrent promotion moved it
    assert pointer["promoted_by"] == "retrain"
    assert result["champion"]["promoted"] is False
    assert "changed while this run trained" in result["champion"]["reason"]
    assert result["champion"]["generation"] == pointer["generation"]


def test_choose_champion_with_a_stale_generation_keeps_the_newer_champion(trained) -> None:
    config, first = trained
    cfg = load_config(config)
    pointer = read_champion(store_for(cfg), "tiny")
    stale = choose_champion.fn(cfg, candidates_of(first), expected_generation=0)
    assert stale["promoted"] is False and stale["version"] == pointer["version"]
    assert read_champion(store_for(cfg), "tiny") == pointer
    fresh = choose_champion.fn(cfg, candidates_of(first), expected_generation=pointer["generation"])
    assert fresh["promoted"] is True and fresh["generation"] == pointer["generation"] + 1


def test_retrain_promotes_a_better_challenger_against_the_existing_champion(trained) -> None:
    """The champion is re-scored on the challenger's slices; the better one wins, both recorded."""
    config, first = trained
    base = load_config(config)
    store = store_for(base)
    splits = rolling_splits(base, datetime(2026, 1, 11))
    cfg = with_splits(base, splits)
    before = read_champion(store, "tiny")

    kept = promote_if_better.fn(cfg, splits, candidates_of(first, pr_auc=-1.0))
    assert kept["promoted"] is False and "<= champion" in kept["reason"]
    assert read_champion(store, "tiny") == before

    won = promote_if_better.fn(cfg, splits, candidates_of(first, pr_auc=2.0))
    assert won["promoted"] is True and "> champion" in won["reason"]
    decision = store.read_json(won["key"])
    assert decision["champion"]["value"] is not None  # the champion's re-scored number
    assert decision["challenger"]["value"] == 2.0
    after = read_champion(store, "tiny")
    assert after["generation"] == before["generation"] + 1
    assert after["promoted_by"] == "retrain"


def test_retrain_flow_decides_against_the_existing_champion(trained) -> None:
    from flows.retrain import retrain_flow

    config, _ = trained
    store = store_for(load_config(config))
    before = read_champion(store, "tiny")
    result = retrain_flow(config, as_of=datetime(2026, 1, 11).date())
    decision = store.read_json(result["decision"]["key"])
    assert decision["champion"]["version"] == before["version"]  # compared with the champion
    after = read_champion(store, "tiny")
    if decision["promoted"]:
        assert after["generation"] == before["generation"] + 1
        assert after["version"] == decision["challenger"]["version"]
    else:
        assert after == before


def test_drift_event_is_emitted_once_per_cooldown_even_by_concurrent_nights(trained) -> None:
    config, _ = trained
    cfg = load_config(config)
    store = store_for(cfg)
    plan = plan_night.fn(cfg, NIGHTS[0])
    (scored,) = commit_night.fn(cfg, NIGHTS[0], [score_shard.fn(cfg, NIGHTS[0], s)
                                                 for s in plan.shards])
    store.delete(last_event_key(cfg))

    first = check_drift.fn(cfg, NIGHTS[0], scored)
    assert first.drift and first.event not in (None, "suppressed (cooldown)")
    assert store.read_json(last_event_key(cfg))["event_id"] == first.event
    assert check_drift.fn(cfg, NIGHTS[0], scored).event == "suppressed (cooldown)"

    marker = store.read_json(last_event_key(cfg))  # the cooldown has passed
    marker["emitted_at"] = (datetime.now(UTC) - timedelta(hours=25)).isoformat()
    store.write_json(last_event_key(cfg), marker)
    results: list[Any] = []
    barrier = threading.Barrier(3)

    def night() -> None:
        barrier.wait()
        results.append(check_drift.fn(cfg, NIGHTS[0], scored).event)

    threads = [threading.Thread(target=night) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emitted = [e for e in results if e != "suppressed (cooldown)"]
    assert len(results) == 3 and len(emitted) == 1, results
    assert store.read_json(last_event_key(cfg))["event_id"] == emitted[0]
