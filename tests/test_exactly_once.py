"""Exactly-once rows under concurrency and crashes: (entity, timestamp) is unique across the
validated layer whatever runs at the same time, and a commit cut short is finished by the
next run. Real threads on a real local store (its compare-and-swap is a file lock; the
S3 one is exercised in tests/test_faults.py)."""

from __future__ import annotations

import json
import threading
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tasks.data import ingest, layer
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
    assert len(report["collisions"]) in (48, 96)
    assert len(report["collisions"]) == int(loser.reason.split("sources' (")[1].split(" of")[0])
    assert unique_rows(Store(root), cfg).height == 96


def test_a_commit_cut_short_is_finished_by_the_next_run(tmp_path: Path, monkeypatch) -> None:
    """The process dies after committing the first of a batch's two days (the store is left
    exactly as a kill -9 there would leave it): the rerun files the batch once."""
    src = tmp_path / "2026-01-05.csv"
    src.write_bytes(csv_bytes(good_frame()))
    cfg = make_cfg(src)
    store = Store(f"file://{tmp_path}/store")
    url = f"file://{src}"
    ingest.ingest_batch(store, cfg, url)
    src.write_bytes(csv_bytes(good_frame(START + timedelta(hours=6))))  # corrected, shifted

    class Killed(BaseException):
        pass

    real = layer._commit_day
    calls = []

    def dies_after_first_day(*args: Any, **kwargs: Any) -> Any:
        if calls:
            raise Killed
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(layer, "_commit_day", dies_after_first_day)
    with pytest.raises(Killed):
        ingest.ingest_batch(store, cfg, url)
    monkeypatch.setattr(layer, "_commit_day", real)
    entry = ingest.read_ledger(store, cfg, url)
    assert entry is not None and not entry.settled  # the ledger knows a commit is in flight

    out = ingest.ingest_batch(store, cfg, url, listing={"size": 1})
    assert out.status == "validated" and out.duplicates == 0
    rows = unique_rows(store, cfg)
    assert rows["timestamp"].min() == START + timedelta(hours=6) and rows.height == 96
    assert ingest.read_ledger(store, cfg, url).settled
    orphans = [k for k in store.list("datasets/tiny/validated") if k.endswith(".parquet")
               and k not in layer.committed_parts(store, cfg, layer.validated_days(store, cfg))]
    assert orphans == []


def test_a_store_written_before_manifests_is_adopted(tmp_path: Path) -> None:
    """Old layout: part-<source-id>.parquet, no manifest, a flat ledger entry."""
    src = tmp_path / "2026-01-05.csv"
    src.write_bytes(csv_bytes(good_frame()))
    cfg = make_cfg(src)
    store = Store(f"file://{tmp_path}/store")
    url = f"file://{src}"
    table = ingest.to_validated(cfg, ingest.parse_batch(cfg, src.read_bytes(), src.name))
    keys = []
    for day, part in layer.split_days(table).items():
        key = f"datasets/tiny/validated/date={day.isoformat()}/part-{ingest.source_id_of(url)}.parquet"
        store.write_bytes(key, layer.parquet_bytes(part.to_arrow().cast(table.schema)))
        keys.append(key)
    store.write_json(ingest._ledger_key(cfg, url), {
        "source": url, "status": "validated", "rows": 96, "reason": None, "keys": keys,
        "batch_id": ingest.batch_id_of(src.read_bytes()), "reasons": []})
    assert unique_rows(store, cfg).height == 96  # read without a manifest
    assert ingest.ingest_batch(store, cfg, url).status == "validated"  # same bytes: skipped

    src.write_bytes(csv_bytes(good_frame(START + timedelta(hours=12))))
    ingest.ingest_batch(store, cfg, url)
    rows = unique_rows(store, cfg)
    assert rows.height == 96 and rows["timestamp"].min() == START + timedelta(hours=12)
    assert not any(store.exists(k) for k in keys)  # the legacy parts were replaced


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


def test_manifest_is_the_commit(tmp_path: Path) -> None:
    """A part file no manifest names (a writer died before its commit) is never read."""
    src = tmp_path / "2026-01-05.csv"
    src.write_bytes(csv_bytes(good_frame()))
    cfg = make_cfg(src)
    store = Store(f"file://{tmp_path}/store")
    out = ingest.ingest_batch(store, cfg, f"file://{src}")
    stray = out.keys[0].replace(".parquet", "-stray.parquet")
    store.write_bytes(stray, store.read_bytes(out.keys[0]))  # the same rows, uncommitted
    manifest = store.read_json(layer.manifest_key(cfg, START.date()))
    assert [e["key"] for e in manifest["parts"].values()] == [out.keys[0]]
    assert layer.committed_parts(store, cfg, [START.date()]) == [out.keys[0]]
    rows = unique_rows(store, cfg)  # the stray part read too would duplicate every key
    filed = pl.from_arrow(ingest.to_validated(cfg, ingest.parse_batch(cfg, src.read_bytes(),
                                                                      src.name)))
    assert rows.sort("entity", "timestamp").equals(filed.sort("entity", "timestamp"))
