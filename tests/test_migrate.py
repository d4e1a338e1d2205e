"""`nightowl migrate` on a store written by the manifest-era code.

tests/fixtures/store-v1 was written by that code (main before the tables): source a.csv
(2026-01-05/06), b.csv re-sending a's 2026-01-06 rows (dropped then as duplicates), c.csv
(2026-01-07/08), a pre-manifest day (2026-01-09, `part-<source-id>.parquet`, flat ledger),
and an orphan part no manifest names (a commit that never happened). The scores layer's
old layout is written here as the old `commit_night` left it: one part per shard.
"""

from __future__ import annotations

import shutil
from datetime import date, datetime
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from flows.cli import app
from tasks.data import layer, tables
from tasks.data.validated_migration import migrate_validated
from tasks.nightly import scores_table
from tasks.nightly.scores_migration import migrate_scores
from tasks.store import Store
from tests.test_ingest import good_frame, make_cfg
from tests.tiny import write_config

FIXTURE = Path(__file__).parent / "fixtures" / "store-v1"
RAW = "file:///tmp/oldstore/raw"  # where the fixture's sources were


def old_store(tmp_path: Path) -> Store:
    shutil.copytree(FIXTURE, tmp_path / "store")
    store = Store(f"file://{tmp_path}/store")
    night = date(2026, 1, 9)
    for scope, n, value in (("_dataset", 0, 1.0), ("_dataset", 1, 2.0)):
        frame = good_frame(datetime(2026, 1, 9), entities=1).head(4).select("timestamp", "entity")
        store.write_parquet(f"scores/tiny/date={night}/part-{scope}-{n:04d}.parquet",
                            frame.with_columns(pl.lit(value).alias("score")).to_arrow())
    return store


def test_migrate_turns_parts_and_manifests_into_tables_once(tmp_path: Path) -> None:
    store = old_store(tmp_path)
    cfg = make_cfg(f"{tmp_path}/raw/*.csv")
    frames = [pl.from_arrow(store.read_parquet(k)) for k in store.list("datasets/tiny/validated")
              if k.endswith(".parquet") and "deadbeef" not in k]  # the orphan was never committed
    expected = pl.concat(frames).sort("entity", "timestamp")

    done = migrate_validated(store, cfg)
    assert done.committed and done.rows == expected.height == 240
    assert layer.load_validated(store, cfg).equals(expected.select(layer.load_validated(
        store, cfg).columns))
    table = pl.from_arrow(tables.open_table(store, layer.validated_key(cfg)).to_pyarrow_table())
    sources = {d.isoformat(): sorted(set(s)) for d, s in
               table.group_by("date").agg(pl.col("sources").explode()).iter_rows()}
    assert sources == {"2026-01-05": [f"{RAW}/a.csv"], "2026-01-06": [f"{RAW}/b.csv"],
                       "2026-01-07": [f"{RAW}/c.csv"], "2026-01-08": [f"{RAW}/c.csv"],
                       "2026-01-09": [f"{RAW}/legacy.csv"]}
    prefix = layer.validated_key(cfg)
    tracked = tables.tracked_keys(store, prefix, tables.open_table(store, prefix))
    leftovers = [k for k in store.list(prefix) if "/_delta_log/" not in k and k not in tracked]
    assert leftovers == []  # manifests, old parts and the orphan are gone

    night = migrate_scores(store, cfg)
    assert night.committed and night.rows == 8
    scores = scores_table.read_scores(store, cfg, date(2026, 1, 9))
    assert scores.height == 8 and sorted(scores["score"].unique()) == [1.0, 2.0]

    version = layer.table_version(store, cfg)
    config = write_config(tmp_path, {"name": "tiny", "source": {"path": f"{tmp_path}/raw/*.csv"},
                                     "columns": {"features": ["a", "b", "c"]},
                                     "splits": {"train": {"start": "2026-01-05T00:00:00",
                                                          "end": "2026-01-06T00:00:00"},
                                                "validation": [{"start": "2026-01-06T00:00:00",
                                                                "end": "2026-01-07T00:00:00"}]},
                                     "families": [{"name": "dense_ae"}],
                                     "store": {"root": store.url}})
    again = CliRunner().invoke(app, ["migrate", "--config", config])
    assert again.exit_code == 0, again.output
    assert '"committed": false' in again.output and layer.table_version(store, cfg) == version


def test_a_migration_killed_before_removing_the_old_files_is_finished_once(tmp_path: Path) -> None:
    store = old_store(tmp_path)
    cfg = make_cfg(f"{tmp_path}/raw/*.csv")
    kept = {k: store.read_bytes(k) for k in store.list("datasets/tiny/validated")}
    migrate_validated(store, cfg)
    for k, data in kept.items():  # as if killed right after the commit
        store.write_bytes(k, data)
    version = layer.table_version(store, cfg)
    rerun = migrate_validated(store, cfg)
    assert not rerun.committed and rerun.removed > 0
    assert layer.table_version(store, cfg) == version
    assert layer.load_validated(store, cfg).height == 240
