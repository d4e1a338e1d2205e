"""Nightly runs: idempotent reruns, a missing night, a corrupt delivery quarantined."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest

from schemas.config import load_config, parse_config
from tasks.data import tables
from tasks.data.ingest import batches_for_night
from tasks.data.synthetic import materialize
from tasks.nightly import scores_table
from tasks.nightly.score import read_scores
from tasks.store import Store
from tests.tiny import NIGHTS, tiny_config, write_config


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory) -> tuple[str, Store]:
    """One tiny trained champion shared by this module's nights (~10 s)."""
    import torch

    from flows.train import train_flow

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("nightly")
    data = tiny_config(root)
    materialize(parse_config(data).source.synthetic, data["source"]["path"])
    config = write_config(root, data)
    train_flow(config)
    return config, Store(load_config(config).store.root)


def _partition(store: Store, config: str, night: date) -> list[str]:
    """The night's data files in the scores table's latest snapshot."""
    files = scores_table.night_files(store, load_config(config), night)
    return sorted(k for keys in files.values() for k in keys)


def test_rerunning_a_night_replaces_its_partition(trained):
    from flows.nightly import nightly_flow

    config, store = trained
    cfg = load_config(config)
    first = nightly_flow(config, NIGHTS[0])
    (key,) = first["scoring"]["keys"]
    before = read_scores(store, cfg, NIGHTS[0])
    version = tables.version_of(store, scores_table.scores_key(cfg))
    stray = f"scores/tiny/date={NIGHTS[0].isoformat()}/scope=_dataset/part-left-by-a-dead-run.parquet"
    store.write_bytes(stray, b"not scores")  # files no commit names are never read
    second = nightly_flow(config, NIGHTS[0])
    after = read_scores(store, cfg, NIGHTS[0])

    assert first["scoring"]["status"] == "scored" and first["scoring"]["rows"] == 48
    assert _partition(store, config, NIGHTS[0]) == second["scoring"]["keys"] != [key]
    assert tables.version_of(store, scores_table.scores_key(cfg)) == version + 1  # one commit
    assert after.height == before.height == 48
    assert after.equals(before)
    assert pl.from_arrow(store.read_parquet(second["scoring"]["keys"][0])).height == 48
    assert read_scores(store, cfg, NIGHTS[0], version=version).equals(before)  # time travel
    assert store.list(scores_table.staging_prefix(cfg)) == []  # staged parts removed
    assert store.exists(f"drift/tiny/date={NIGHTS[0].isoformat()}/report.json")
    assert second["artifacts"] == ["nightly-tiny", "nightly-tiny-segments", "nightly-tiny-scores"]


def test_a_night_without_input_is_reported_not_crashed(trained):
    from flows.nightly import nightly_flow

    config, store = trained
    night = nightly_flow(config, date(2026, 2, 1))
    assert night["scoring"]["status"] == "missing"
    assert night["scopes"] == [] and night["plan"]["rows"] == 0
    assert _partition(store, config, date(2026, 2, 1)) == []


def test_corrupt_delivery_is_quarantined_and_touches_nothing(trained):
    from flows.nightly import nightly_flow

    config, store = trained
    nightly_flow(config, NIGHTS[0])
    yesterday = store.read_bytes(_partition(store, config, NIGHTS[0])[0])
    champion = store.read_bytes("models/tiny/CHAMPION.json")
    raw = Path(load_config(config).source.path).parent
    (raw / "2026-01-11.csv").write_text(
        "timestamp,entity,s00,s01,s02,label\n2026-01-11T00:00:00,machine-00,1.0,oops,2.0,0\n")

    night = nightly_flow(config, date(2026, 1, 11))

    assert night["ingestion"]["batches_quarantined"] == 1
    assert "s01" in night["ingestion"]["batches"][-1]["reason"]
    assert night["scoring"]["status"] == "missing"
    assert any(k.endswith("2026-01-11.csv") for k in store.list("datasets/tiny/quarantine"))
    assert store.read_bytes(_partition(store, config, NIGHTS[0])[0]) == yesterday
    assert store.read_bytes("models/tiny/CHAMPION.json") == champion


def test_a_night_ingests_only_its_own_and_previous_days_files():
    urls = [f"file:///raw/2026-01-{d:02d}.csv" for d in range(5, 12)]
    assert batches_for_night(urls, date(2026, 1, 9)) == urls[3:5]
    assert batches_for_night(["file:///raw/feed.csv"], date(2026, 1, 9)) is None
