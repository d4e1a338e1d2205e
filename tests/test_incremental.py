"""Incremental ingestion on a real 10,000-file source: one listing per run, and only the
night's files are ever opened; a filed source is skipped by its listing metadata before a
byte is read, a corrected re-delivery is fetched again.

Reads are counted by a filesystem that IS the local filesystem (fsspec's own), registered
under its own protocol so the pipeline opens the source through it: nothing of the
pipeline is replaced.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from schemas.config import DatasetConfig, parse_config
from tasks.data import ingest, layer
from tasks.store import Store

FIRST = date(1999, 1, 1)
FILES = 10_000
NIGHT = date(2010, 6, 15)


class CountingFileSystem(LocalFileSystem):
    """The local filesystem, counting every file opened for reading and every listing."""

    protocol = ("counting",)
    opened: ClassVar[list[str]] = []
    listings: ClassVar[int] = 0

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str) and path.startswith("counting://"):
            path = path[len("counting://"):]
        return super()._strip_protocol(path)

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "r" in mode:
            CountingFileSystem.opened.append(os.path.basename(path))
        return super()._open(path, mode, *args, **kwargs)

    def glob(self, path: str, **kwargs: Any) -> Any:
        CountingFileSystem.listings += 1
        return super().glob(path, **kwargs)


fsspec.register_implementation("counting", CountingFileSystem, clobber=True)


def day_csv(day: date, value: float = 1.0) -> str:
    """Two rows of one machine on `day` (tiny: the source is about the number of files)."""
    t = datetime.combine(day, datetime.min.time())
    return ("timestamp,entity,a,b,c,label\n"
            f"{t.isoformat()},m0,{value},2.0,3.0,0\n"
            f"{(t + timedelta(hours=12)).isoformat()},m0,{value},2.5,3.5,0\n")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10,000 daily files, 1999-01-01 onwards, one per day."""
    raw = tmp_path_factory.mktemp("feed")
    for i in range(FILES):
        day = FIRST + timedelta(days=i)
        (raw / f"{day.isoformat()}.csv").write_text(day_csv(day))
    return raw


def config(raw: Path, store: Path) -> DatasetConfig:
    return parse_config({
        "name": "fleet",
        "source": {"path": f"counting://{raw}/*.csv", "format": "csv"},
        "columns": {"features": ["a", "b", "c"]},
        "splits": {"train": {"start": "2010-01-01T00:00:00", "end": "2010-02-01T00:00:00"},
                   "validation": [{"start": "2010-02-01T00:00:00", "end": "2010-03-01T00:00:00"}]},
        "families": [{"name": "dense_ae"}],
        "store": {"root": f"file://{store}"},
    }, origin="incremental")


def run_night(cfg: DatasetConfig, night: date) -> ingest.IngestReport:
    CountingFileSystem.opened.clear()
    CountingFileSystem.listings = 0
    return ingest.ingest_night.fn(cfg, night)


def test_a_night_touches_only_its_files_and_a_rerun_touches_none(source: Path,
                                                                 tmp_path: Path) -> None:
    cfg = config(source, tmp_path / "store")
    store = Store(cfg.store.root)
    assert len(list(source.iterdir())) == FILES

    first = run_night(cfg, NIGHT)
    assert CountingFileSystem.listings == 1  # the source is listed once
    assert sorted(CountingFileSystem.opened) == ["2010-06-14.csv", "2010-06-15.csv"]
    assert [b.status for b in first.batches] == ["validated", "validated"]
    ledgers = {k: store.read_bytes(k) for k in store.list("datasets/fleet/ingested")}
    assert len(ledgers) == 2

    again = run_night(cfg, NIGHT)  # a rerun: every file's listing matches its ledger
    assert CountingFileSystem.opened == [] and CountingFileSystem.listings == 1
    assert again.batches == first.batches
    assert {k: store.read_bytes(k) for k in store.list("datasets/fleet/ingested")} == ledgers

    # the next night reads its own file only (its context day is already filed)
    run_night(cfg, NIGHT + timedelta(days=1))
    assert CountingFileSystem.opened == ["2010-06-16.csv"]


def test_a_corrected_redelivery_is_fetched_and_a_touched_file_is_not_refiled(
        source: Path, tmp_path: Path) -> None:
    cfg = config(source, tmp_path / "store")
    store = Store(cfg.store.root)
    night_file = source / f"{NIGHT.isoformat()}.csv"
    original = night_file.read_text()
    try:
        run_night(cfg, NIGHT)
        parts = store.list("datasets/fleet/validated/date=2010-06-15")

        os.utime(night_file, (1e9, 1e9))  # touched: new mtime, same bytes
        touched = run_night(cfg, NIGHT)
        assert CountingFileSystem.opened == [night_file.name]  # read to compare, not re-filed
        assert store.list("datasets/fleet/validated/date=2010-06-15") == parts
        assert run_night(cfg, NIGHT).batches == touched.batches
        assert CountingFileSystem.opened == []  # the new listing was remembered

        night_file.write_text(day_csv(NIGHT, value=7.0))  # corrected re-delivery
        run_night(cfg, NIGHT)
        assert CountingFileSystem.opened == [night_file.name]
        rows = layer.load_validated(store, cfg, datetime(2010, 6, 15), datetime(2010, 6, 16))
        assert rows["a"].to_list() == [7.0, 7.0]  # replaced, not added
    finally:
        night_file.write_text(original)


def test_a_whole_source_rerun_reads_no_file(source: Path, tmp_path: Path) -> None:
    """ingest_source over 60 files, then again: one bulk read of the ledgers, no fetch."""
    sub = tmp_path / "feed60"
    sub.mkdir()
    for name in sorted(os.listdir(source))[:60]:
        (sub / name).write_bytes((source / name).read_bytes())
    cfg = config(sub, tmp_path / "store")
    ingest.ingest_source.fn(cfg)
    CountingFileSystem.opened.clear()
    report = ingest.ingest_source.fn(cfg)
    assert CountingFileSystem.opened == []
    assert report.rows_validated == 120
    assert layer.load_validated(Store(cfg.store.root), cfg).height == 120
    assert len(report.batches) == 60
