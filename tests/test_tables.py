"""The Delta tables in a store: fresh across processes, whole nights, time travel.

Real tables on a local folder and on the local S3 endpoint (tests/s3_server.py); the
"other process" is a real `python` process writing while this one keeps its clients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from tasks.data import ingest, layer, tables
from tasks.nightly import scores_table
from tasks.store import Store
from tests.s3_server import s3_endpoint
from tests.test_ingest import START, csv_bytes, good_frame, make_cfg

REPO = Path(__file__).resolve().parents[1]
INGEST_ONE = """
import sys
from tasks.data import ingest
from tasks.store import Store
from tests.test_ingest import make_cfg
cfg = make_cfg(sys.argv[2])
print(ingest.ingest_batch(Store(sys.argv[1]), cfg, sys.argv[3]).status)
"""


@pytest.fixture(scope="module")
def s3_root():
    with s3_endpoint("nightowl-tables") as _:
        yield "s3://nightowl-tables/fresh"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_long_lived_process_sees_what_another_process_wrote(kind: str, tmp_path: Path,
                                                              request) -> None:
    root = f"file://{tmp_path}/store" if kind == "local" else request.getfixturevalue("s3_root")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2026-01-05.csv").write_bytes(csv_bytes(good_frame()))
    cfg = make_cfg(raw / "*.csv")
    store = Store(root)  # this process's client, kept across the other's write
    ingest.ingest_batch(store, cfg, f"file://{raw}/2026-01-05.csv")
    assert layer.validated_days(store, cfg) == [date(2026, 1, 5), date(2026, 1, 6)]
    assert store.list_dirs("datasets/tiny/validated") == ["_delta_log", "date=2026-01-05",
                                                          "date=2026-01-06"]

    later = raw / "2026-01-07.csv"
    later.write_bytes(csv_bytes(good_frame(START + timedelta(days=2))))
    other = subprocess.run([sys.executable, "-c", INGEST_ONE, root, str(raw / "*.csv"),
                            f"file://{later}"], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert other.returncode == 0 and other.stdout.strip().endswith("validated"), other.stderr

    assert layer.validated_days(store, cfg)[-1] == date(2026, 1, 8)
    assert layer.load_validated(store, cfg).height == 2 * 96
    assert "date=2026-01-08" in store.list_dirs("datasets/tiny/validated")  # no stale listing


def _scores(day: date, value: float) -> pl.DataFrame:
    t0 = datetime.combine(day, datetime.min.time())
    return pl.DataFrame({"timestamp": [t0 + timedelta(hours=i) for i in range(4)],
                         "entity": ["m0", "m0", "m1", "m1"], "score": [value] * 4,
                         "is_anomaly": [False, True, False, False]})


def test_a_night_is_whole_or_the_previous_one(tmp_path: Path) -> None:
    """Two shards staged, the run killed before its commit: readers still see the previous
    night. The commit makes both shards visible at once; a retry of the landed commit (its
    reply lost) commits nothing again; the earlier night stays readable by version."""
    cfg = make_cfg(tmp_path)
    store = Store(f"file://{tmp_path}/store")
    night = date(2026, 1, 9)
    first = [scores_table.stage(store, cfg, night, "_dataset", f"s{i}", _scores(night, 1.0))
             for i in range(2)]
    scores_table.commit_night(store, cfg, night, first)
    version = tables.version_of(store, scores_table.scores_key(cfg))
    before = scores_table.read_scores(store, cfg, night)
    assert before.height == 8 and store.list(scores_table.staging_prefix(cfg)) == []

    rerun = [scores_table.stage(store, cfg, night, "_dataset", f"s{i}", _scores(night, 2.0))
             for i in range(2)]
    # killed here: staged parts exist, no commit
    assert scores_table.read_scores(store, cfg, night).equals(before)
    assert pl.scan_delta(tables.table_uri(store, scores_table.scores_key(cfg))).collect() \
        .height == 8  # any Delta reader: the previous night only

    kept = {k: store.read_bytes(k) for k in rerun}
    files = scores_table.commit_night(store, cfg, night, rerun)
    after = scores_table.read_scores(store, cfg, night)
    assert after.height == 8 and after["score"].unique().to_list() == [2.0]
    assert sorted(files) == ["_dataset"] and all(store.exists(k) for k in files["_dataset"])
    for k, data in kept.items():  # the task retried after its commit landed
        store.write_bytes(k, data)
    assert scores_table.commit_night(store, cfg, night, rerun) == files
    assert tables.version_of(store, scores_table.scores_key(cfg)) == version + 1
    assert scores_table.read_scores(store, cfg, night, version=version).equals(before)


def test_an_empty_rerun_removes_the_night(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    store = Store(f"file://{tmp_path}/store")
    nights = [date(2026, 1, 9), date(2026, 1, 10)]
    for night in nights:
        key = scores_table.stage(store, cfg, night, "_dataset", "s0", _scores(night, 1.0))
        scores_table.commit_night(store, cfg, night, [key])
    assert scores_table.commit_night(store, cfg, nights[0], []) == {}
    assert scores_table.read_scores(store, cfg, nights[0]).height == 0
    assert scores_table.read_scores(store, cfg, nights[1]).height == 4


def test_maintenance_vacuums_outside_the_retention_window_only(prefect_harness,
                                                               tmp_path: Path) -> None:
    """Three deliveries to one day: each commit rewrote the day, so the folder holds three
    files for one tracked file. Inside the retention window they stay (time travel works);
    a window of zero removes the two superseded ones."""
    from flows.maintain import maintain_flow
    from tests.tiny import write_config

    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        rows = good_frame(START, entities=1).head(4).with_columns(pl.lit(f"m{i}").alias("entity"))
        (raw / f"{i}.csv").write_bytes(csv_bytes(rows))
    config = {"name": "tiny", "source": {"path": str(raw / "*.csv")},
              "columns": {"features": ["a", "b", "c"]},
              "splits": {"train": {"start": "2026-01-05T00:00:00", "end": "2026-01-06T00:00:00"},
                         "validation": [{"start": "2026-01-06T00:00:00",
                                         "end": "2026-01-07T00:00:00"}]},
              "families": [{"name": "dense_ae"}], "store": {"root": f"file://{tmp_path}/store"}}
    cfg = make_cfg(raw / "*.csv")
    store = Store(f"file://{tmp_path}/store")
    for source in ingest.list_sources(cfg):  # one after the other: no commit retried
        ingest.ingest_batch(store, cfg, source.url)
    key = layer.validated_key(cfg)
    before = layer.load_validated(store, cfg)
    first = 1  # the first ingestion's version (0 created the table)

    def data_files() -> list[str]:
        return [k for k in store.list(key) if k.endswith(".parquet")]

    assert len(data_files()) == 3 and before.height == 12
    result = maintain_flow(write_config(tmp_path, config))
    validated, scores = result["tables"]
    assert validated["vacuumed"] == 0 and scores == {"table": "scores/tiny", "skipped": "no table"}
    assert len(data_files()) == 3 and layer.load_validated(store, cfg).equals(before)
    assert layer.load_validated(store, cfg, version=first).height == 4  # inside the window

    gone = tables.maintain(store, key, retention_hours=0)
    assert gone["vacuumed"] == 2 and len(data_files()) == 1
    assert layer.load_validated(store, cfg).equals(before)
    with pytest.raises(OSError):
        layer.load_validated(store, cfg, version=first)  # outside it: vacuumed


def test_readers_never_see_half_a_night_while_reruns_commit(tmp_path: Path) -> None:
    """A night rerun over and over (two shards each, a new score each run) while two kinds
    of readers read it: every read holds one whole run, never a mix or a part."""
    import threading

    from deltalake import DeltaTable

    cfg = make_cfg(tmp_path)
    store = Store(f"file://{tmp_path}/store")
    night = date(2026, 1, 9)
    uri = tables.table_uri(store, scores_table.scores_key(cfg))

    def run(value: float) -> None:
        staged = [scores_table.stage(store, cfg, night, "_dataset", f"s{i}",
                                     _scores(night, value).slice(2 * i, 2)) for i in range(2)]
        scores_table.commit_night(store, cfg, night, staged)

    run(0.0)
    done = threading.Event()
    seen: list[tuple[int, list[float]]] = []

    def read() -> None:
        while not done.is_set():
            for frame in (scores_table.read_scores(store, cfg, night),
                          pl.from_arrow(DeltaTable(uri).to_pyarrow_table()),
                          pl.scan_delta(uri).filter(pl.col("date") == night).collect()):
                seen.append((frame.height, sorted(frame["score"].unique().to_list())))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for value in range(1, 8):
        run(float(value))
    done.set()
    for t in readers:
        t.join()
    assert len(seen) >= 6
    assert all(height == 4 and len(values) == 1 for height, values in seen), seen[:10]
    assert scores_table.read_scores(store, cfg, night)["score"].unique().to_list() == [7.0]


def test_a_batch_no_other_source_holds_is_planned_as_the_policy_plans_it(tmp_path: Path) -> None:
    """The commit's shortcut (nothing of another source in the touched days: no joins) must
    give exactly the rows the full policy gives, sorted, with the day and the source."""
    cfg = make_cfg(tmp_path / "*.csv")
    rows = ingest.to_validated(cfg, good_frame())  # interleaved in time: sorted by key here
    empty = layer.read_days(None, cfg, [])
    shortcut = layer.plan_commit(cfg, empty, "file:///a.csv", rows.reverse())
    # the same batch where another source holds a key that does not collide: full policy
    stranger = layer.plan_commit(cfg, empty, "file:///b.csv",
                                 rows.filter(pl.col("entity") == "m0").head(1)
                                 .with_columns(pl.lit("m9").alias("entity"))).rows
    full = layer.plan_commit(cfg, stranger, "file:///a.csv", rows.reverse())
    assert shortcut.rows.height == rows.height and not shortcut.collisions.duplicates
    assert shortcut.rows.equals(full.rows.filter(pl.col("entity") != "m9"))
    assert shortcut.rows.select(layer.KEY).equals(rows.select(layer.KEY))
    assert shortcut.rows["sources"].to_list() == [["file:///a.csv"]] * rows.height
    assert shortcut.rows["date"].to_list() == rows["timestamp"].dt.date().to_list()
    # the same source again over its own rows: still the shortcut, and the same rows
    again = layer.plan_commit(cfg, shortcut.rows, "file:///a.csv", rows)
    assert again.rows.equals(shortcut.rows)
