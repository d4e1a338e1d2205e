"""Exactly-once rows under concurrency and crashes: (entity, timestamp) is unique across the
validated table whatever runs at the same time, no later delivery loses a row another
source still holds, and a run killed around its commit is finished by the next run. Real
threads on a real local Delta table (the S3 one is exercised in tests/test_faults.py)."""

from __future__ import annotations

import json
import threading
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tasks.data import ingest, layer, tables
from tasks.store import Store
from tests.test_ingest import START, csv_bytes, good_frame, make_cfg

DAY2 = START + timedelta(days=1)


def together(*calls: Any) -> list[Any]:
    """Run the calls at the same moment in threads; their results (or exceptions raised)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as err:  # noqa: BLE001 - returned to the test
            results[i] = err
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def unique_rows(store: Store, cfg: Any) -> pl.DataFrame:
    rows = layer.load_validated(store, cfg)
    assert rows.select("entity", "timestamp").is_duplicated().sum() == 0
    return rows


@pytest.mark.parametrize("runs", [2, 4])
def test_concurrent_ingestions_of_the_same_night(tmp_path: Path, runs: int) -> None:
    """Several runs of one night at once, each with its own store client: one copy of each row."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2026-01-05.csv").write_bytes(csv_bytes(good_frame()))
    (raw / "2026-01-06.csv").write_bytes(csv_bytes(good_frame(DAY2)))
    (raw / "2026-01-06-resend.csv").write_bytes(csv_bytes(good_frame(DAY2)))  # same rows again
    cfg = make_cfg(raw / "*.csv")
    root = f"file://{tmp_path}/store"
    results = together(*[lambda: ingest.ingest_urls(Store(root), cfg, ingest.list_sources(cfg))
                         for _ in range(runs)])
    assert not [r for r in results if isinstance(r, BaseException)], results
    rows = unique_rows(Store(root), cfg)
    assert rows.height == 2 * 96  # nothing lost, the re-send added nothing
    assert all(r.rows_quarantined == 0 for r in results)


def test_concurrent_conflicting_sources_file_one_and_quarantine_the_other(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2026-01-05-a.csv").write_bytes(csv_bytes(good_frame()))
    (raw / "2026-01-05-b.csv").write_bytes(csv_bytes(good_frame().with_columns(pl.col("a") + 1)))
    cfg = make_cfg(raw / "*.csv")
    root = f"file://{tmp_path}/store"
    a, b = (f"file://{raw}/2026-01-05-{x}.csv" for x in "ab")
    first, second = together(lambda: ingest.ingest_batch(Store(root), cfg, a),
                             lambda: ingest.ingest_batch(Store(root), cfg, b))
    assert sorted([first.status, second.status]) == ["quarantined", "validated"]
    loser = first if first.status == "quarantined" else second
    assert "across sources" in loser.reason and "of 96 rows" in loser.reason
    report = Store(root).read_json(loser.keys[1])
    # every key that collided when it was refused (the winner may still be committing day 2)
    assert len(report["collisions"]) == 96  # the batch is one commit: all of it collides
    assert len(report["collisions"]) == int(loser.reason.split("sources' (")[1].split(" of")[0])
    assert unique_rows(Store(root), cfg).height == 96


class Killed(BaseException):
    """What a kill -9 at that line would leave: nothing after it runs."""


def dies(*args: Any, **kwargs: Any) -> None:
    raise Killed


def one_source(tmp_path: Path) -> tuple[Path, Any, Store, str]:
    """A day's good CSV, its config, an empty store and the source's URL."""
    src = tmp_path / "2026-01-05.csv"
    src.write_bytes(csv_bytes(good_frame()))
    return src, make_cfg(src), Store(f"file://{tmp_path}/store"), f"file://{src}"


def test_a_run_killed_before_its_commit_leaves_the_table_as_it_was(tmp_path: Path,
                                                                   monkeypatch) -> None:
    src, cfg, store, url = one_source(tmp_path)
    ingest.ingest_batch(store, cfg, url)
    version, rows = layer.table_version(store, cfg), unique_rows(store, cfg)
    src.write_bytes(csv_bytes(good_frame(START + timedelta(hours=6))))  # corrected, shifted

    monkeypatch.setattr(layer, "write_deltalake", dies)
    with pytest.raises(Killed):
        ingest.ingest_batch(store, cfg, url)
    monkeypatch.undo()
    assert layer.table_version(store, cfg) == version and unique_rows(store, cfg).equals(rows)
    entry = ingest.read_ledger(store, cfg, url)
    assert entry is not None and not entry.settled  # the ledger knows a commit was in flight

    out = ingest.ingest_batch(store, cfg, url, listing={"size": 1})
    assert out.status == "validated" and out.duplicates == 0
    rows = unique_rows(store, cfg)
    assert rows["timestamp"].min() == START + timedelta(hours=6) and rows.height == 96
    assert ingest.read_ledger(store, cfg, url).settled


def test_a_run_killed_after_its_commit_is_settled_by_the_next(tmp_path: Path,
                                                             monkeypatch) -> None:
    """The commit landed, the ledger's record did not: the rerun changes no row."""
    src, cfg, store, url = one_source(tmp_path)

    monkeypatch.setattr(ingest, "_record", dies)
    with pytest.raises(Killed):
        ingest.ingest_batch(store, cfg, url)
    monkeypatch.undo()
    version = layer.table_version(store, cfg)
    assert not ingest.read_ledger(store, cfg, url).settled
    out = ingest.ingest_batch(store, cfg, url)
    assert out.status == "validated" and unique_rows(store, cfg).height == 96
    assert layer.table_version(store, cfg) == version  # nothing to change: no commit
    assert ingest.read_ledger(store, cfg, url).settled


DAY1 = datetime(2026, 3, 1)


def five_minutely(day: datetime, days: int, shift: float = 0.0) -> pl.DataFrame:
    """288 rows a day of one machine."""
    n = 288 * days
    return pl.DataFrame({"timestamp": [day + timedelta(minutes=5 * i) for i in range(n)],
                         "entity": ["m0"] * n, "a": [float(i % 288) + shift for i in range(n)],
                         "b": [1.0] * n, "c": [2.0] * n, "label": [0] * n})


@pytest.mark.parametrize("on_conflict", ["quarantine", "replace"])
def test_a_duplicate_then_a_shrinking_correction_loses_no_day(tmp_path: Path,
                                                              on_conflict: str) -> None:
    """A delivers days 1-2; B re-delivers day 2, identical, under another name; A corrects its
    file to day 1 only. B still holds day 2: all of its 288 rows stay."""
    raw = tmp_path / "raw"
    raw.mkdir()
    cfg = make_cfg(raw / "*.csv", on_conflict=on_conflict)
    store = Store(f"file://{tmp_path}/store")
    a, b = raw / "a.csv", raw / "b.csv"
    both = five_minutely(DAY1, 2)
    a.write_bytes(csv_bytes(both))
    assert ingest.ingest_batch(store, cfg, f"file://{a}").status == "validated"
    b.write_bytes(csv_bytes(both.filter(pl.col("timestamp") >= DAY1 + timedelta(days=1))))
    second = ingest.ingest_batch(store, cfg, f"file://{b}")
    assert (second.status, second.duplicates) == ("validated", 288)
    a.write_bytes(csv_bytes(five_minutely(DAY1, 1)))
    assert ingest.ingest_batch(store, cfg, f"file://{a}").status == "validated"

    rows = unique_rows(store, cfg)
    day2 = rows.filter(pl.col("timestamp") >= DAY1 + timedelta(days=1))
    assert rows.height == 2 * 288 and day2.height == 288
    table = tables.open_table(store, layer.validated_key(cfg)).to_pyarrow_table()
    held = pl.from_arrow(table).group_by("date").agg(pl.col("sources").explode().unique())
    assert {d.day: sorted(s) for d, s in held.iter_rows()} == {1: [f"file://{a}"],
                                                               2: [f"file://{b}"]}


def test_a_replacing_source_keeps_its_rows_when_the_replaced_one_shrinks(tmp_path: Path) -> None:
    """Under "replace", B's different day 2 wins over A's; A then drops day 2: B's stay."""
    raw = tmp_path / "raw"
    raw.mkdir()
    cfg = make_cfg(raw / "*.csv", on_conflict="replace")
    store = Store(f"file://{tmp_path}/store")
    a, b = raw / "a.csv", raw / "b.csv"
    a.write_bytes(csv_bytes(five_minutely(DAY1, 2)))
    ingest.ingest_batch(store, cfg, f"file://{a}")
    theirs = five_minutely(DAY1, 2, shift=0.5).filter(pl.col("timestamp") >= DAY1 + timedelta(days=1))
    b.write_bytes(csv_bytes(theirs))
    assert ingest.ingest_batch(store, cfg, f"file://{b}").replaced == 288
    a.write_bytes(csv_bytes(five_minutely(DAY1, 1)))
    ingest.ingest_batch(store, cfg, f"file://{a}")
    day2 = unique_rows(store, cfg).filter(pl.col("timestamp") >= DAY1 + timedelta(days=1))
    assert day2.height == 288 and day2["a"].to_list() == theirs["a"].to_list()


def test_a_source_rejoining_with_changed_values_conflicts_with_the_evidence(tmp_path: Path) -> None:
    """A and B both hold day 2; A then changes day 2's values: B still holds the old ones, so
    A's batch is refused (quarantine) and the table keeps B's rows."""
    raw = tmp_path / "raw"
    raw.mkdir()
    cfg = make_cfg(raw / "*.csv")
    store = Store(f"file://{tmp_path}/store")
    a, b = raw / "a.csv", raw / "b.csv"
    a.write_bytes(csv_bytes(five_minutely(DAY1, 1)))
    b.write_bytes(csv_bytes(five_minutely(DAY1, 1)))
    ingest.ingest_batch(store, cfg, f"file://{a}")
    ingest.ingest_batch(store, cfg, f"file://{b}")
    a.write_bytes(csv_bytes(five_minutely(DAY1, 1, shift=3.0)))
    out = ingest.ingest_batch(store, cfg, f"file://{a}")
    assert out.status == "quarantined" and "b.csv" in out.reason
    assert unique_rows(store, cfg)["a"].to_list() == five_minutely(DAY1, 1)["a"].to_list()


def test_volume_report_names_missing_and_surging_entities(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    cfg = make_cfg(raw / "*.csv")
    store = Store(f"file://{tmp_path}/store")
    night = date(2026, 1, 12)

    def day_rows(day: date, per_entity: dict[str, int]) -> pl.DataFrame:
        t0 = datetime.combine(day, datetime.min.time())
        return pl.concat(pl.DataFrame({
            "timestamp": [t0 + timedelta(minutes=i) for i in range(n)], "entity": [e] * n,
            "a": [1.0] * n, "b": [2.0] * n, "c": [3.0] * n, "label": [0] * n})
            for e, n in per_entity.items())

    for i in range(1, 8):  # a week of usual volume: m0 and m1 send 10 rows a day
        d = night - timedelta(days=i)
        (raw / f"{d}.csv").write_bytes(csv_bytes(day_rows(d, {"m0": 10, "m1": 10})))
    (raw / f"{night}.csv").write_bytes(csv_bytes(day_rows(night, {"m1": 100, "m9": 5})))
    ingest.ingest_urls(store, cfg, ingest.list_sources(cfg))
    report = ingest.volume_report(store, cfg, night)
    assert report["history_days"] == 7
    assert report["missing"] == [{"entity": "m0", "rows": 0, "usual": 10}]
    assert report["high"] == [{"entity": "m1", "rows": 100, "usual": 10}]
    assert report["new"] == [{"entity": "m9", "rows": 5}]
    json.dumps(report)


def test_only_committed_files_are_read(tmp_path: Path) -> None:
    """A Parquet file in the table's folder that no log entry names (a writer died before
    its commit) is never read, by us or by any Delta reader."""
    src = tmp_path / "2026-01-05.csv"
    src.write_bytes(csv_bytes(good_frame()))
    cfg = make_cfg(src)
    store = Store(f"file://{tmp_path}/store")
    out = ingest.ingest_batch(store, cfg, f"file://{src}")
    (part,) = [k for k in store.list(out.keys[0]) if k.endswith(".parquet")]
    store.write_bytes(part.replace(".parquet", "-stray.parquet"), store.read_bytes(part))
    assert unique_rows(store, cfg).height == 96
    assert pl.scan_delta(tables.table_uri(store, layer.validated_key(cfg))).collect().height == 96
