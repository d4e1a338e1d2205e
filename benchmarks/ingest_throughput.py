"""Ingestion throughput: rows/s of one daily CSV through parse + the GX rules + Parquet.

The workload is the synthetic fleet at 256 entities x 38 sensors at 1-minute steps, one
day per file (368,640 rows, ~270 MB of CSV), the size the fleet-scale issue measured.
Both paths run in this process on the same bytes, alternating, so the ratio is fair on
a noisy machine:

- baseline ("before"): what ingestion did before this change: full-file CSV type
  inference with date parsing, the whole GX suite on a pandas copy, one Parquet file per day;
- current: `tasks.data.ingest.ingest_batch` as shipped: typed CSV read, the same suite's
  expectations evaluated in one polars pass (GX only for a failing batch), exactly-once
  commit to the validated Delta table, the ledger entry.

It also measures what validating several new batches at once buys (`source.workers`
1 vs 2 over two day files) and, with --profile, where the current path spends its time.

    .venv/bin/python benchmarks/ingest_throughput.py [--entities 256] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import tomllib
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from schemas.config import DatasetConfig, SyntheticSource, default_config_path, parse_config
from tasks.data import ingest, layer
from tasks.data.rules import validate_with_gx, with_step_column
from tasks.data.synthetic import generate, write_daily_csv
from tasks.store import Store

START = datetime(2026, 1, 5)


def config(raw: Path, sensors: int, workers: int = 1) -> DatasetConfig:
    data = tomllib.loads(default_config_path().read_text())
    data["source"] = {"path": str(raw / "*.csv"), "format": "csv", "workers": workers}
    data["columns"]["features"] = [f"s{i:02d}" for i in range(sensors)]
    return parse_config(data, origin="benchmark")


def make_days(raw: Path, entities: int, sensors: int, days: int) -> list[Path]:
    """`days` daily CSV files of the synthetic fleet at 1-minute steps."""
    frame, _ = generate(SyntheticSource(entities=entities, sensors=sensors, days=max(days, 3),
                                        freq_minutes=1, anomalies_per_entity=0, start=START))
    first = frame.filter(pl.col("timestamp") < START + timedelta(days=days))
    return [Path(p) for p in write_daily_csv(first, str(raw))]


def baseline(store: Store, cfg: DatasetConfig, url: str) -> int:
    """The path before this change, step by step (parse, GX on pandas, a Parquet per day)."""
    data = ingest.fetch_bytes(cfg, url)
    frame = pl.read_csv(data, try_parse_dates=True, infer_schema_length=None)
    frame = ingest._normalize_timestamp(frame, cfg.columns.timestamp)
    outcome = validate_with_gx(cfg, with_step_column(cfg, frame), url.rsplit("/", 1)[-1])
    assert outcome.success, outcome.reasons
    rows = ingest.to_validated(cfg, frame)
    for (day,), part in rows.group_by(pl.col("timestamp").dt.date()):
        store.write_parquet(f"{layer.partition_key(cfg, day)}/part-baseline.parquet",
                            part.to_arrow().cast(ingest.arrow_schemas.validated_schema(cfg)))
    return frame.height


def current(store: Store, cfg: DatasetConfig, url: str) -> int:
    outcome = ingest.ingest_batch(store, cfg, url)
    assert outcome.status == "validated", outcome.reasons
    return outcome.rows


def timed(fn, *args) -> tuple[float, int]:
    started = time.perf_counter()
    rows = fn(*args)
    return time.perf_counter() - started, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=256)
    parser.add_argument("--sensors", type=int, default=38)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="pyinstrument the current path")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="nightowl-ingest-bench-"))
    try:
        raw = work / "raw"
        files = make_days(raw, args.entities, args.sensors, days=2)
        cfg = config(raw, args.sensors)
        url = f"file://{files[0]}"
        megabytes = files[0].stat().st_size / 1e6
        # warm-up (imports, GX context, suite, page cache), untimed
        current(Store(f"file://{work}/warm"), cfg, url)
        baseline(Store(f"file://{work}/warm-b"), cfg, url)

        runs: dict[str, list[float]] = {"baseline": [], "current": []}
        rows = 0
        for i in range(args.repeats):
            for name, fn in (("baseline", baseline), ("current", current)):
                seconds, rows = timed(fn, Store(f"file://{work}/{name}-{i}"), cfg, url)
                runs[name].append(seconds)
        base, cur = statistics.median(runs["baseline"]), statistics.median(runs["current"])
        print(f"one day file: {rows:,} rows x {args.sensors} sensors, {megabytes:.0f} MB CSV "
              f"(median of {args.repeats})")
        print(f"  baseline (before): {base:6.2f} s  {rows / base:>10,.0f} rows/s")
        print(f"  current          : {cur:6.2f} s  {rows / cur:>10,.0f} rows/s")
        print(f"  speed-up         : {base / cur:.1f}x")

        # Rerun of a filed night: the listing metadata answers, nothing is read.
        store = Store(f"file://{work}/rerun")
        ingest.ingest_urls(store, cfg, ingest.list_sources(cfg))
        rerun, _ = timed(lambda: len(ingest.ingest_urls(store, cfg, ingest.list_sources(cfg))
                                     .batches))
        print(f"  rerun of the filed source ({len(files)} files): {rerun:.3f} s")

        # New batches validated at once: two big day files, and one file per entity.
        per_entity = work / "per-entity"
        day = pl.read_csv(files[0], try_parse_dates=True)
        for (entity,), part in day.group_by("entity"):
            per_entity.mkdir(exist_ok=True)
            part.write_csv(per_entity / f"2026-01-05-{entity}.csv")
        for label, folder in (("two day files", raw), (f"{args.entities} per-entity files",
                                                          per_entity)):
            seconds = {}
            for workers in (1, 2, 4):
                wcfg = config(folder, args.sensors, workers)
                runs_w = [timed(lambda s=Store(f"file://{work}/{label[:3]}{workers}-{i}"), c=wcfg:
                                ingest.ingest_urls(s, c, ingest.list_sources(c)).rows_validated)[0]
                          for i in range(args.repeats)]
                seconds[workers] = statistics.median(runs_w)
            print(f"{label}, source.workers 1 / 2 / 4: " + " / ".join(
                f"{seconds[w]:.2f} s" for w in (1, 2, 4))
                  + f"  (2 workers: {seconds[1] / seconds[2]:.2f}x, 4: {seconds[1] / seconds[4]:.2f}x)")

        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
            current(Store(f"file://{work}/profile"), cfg, url)
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False, show_all=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
