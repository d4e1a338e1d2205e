"""The validated Delta table: commit throughput as the table grows, and reading one entity's
last 7 days as the table ages (partition + file pruning must keep it flat).

Measured in one process on the same rows, so the ratios are fair on a noisy machine:

- commit: one new day's rows into a table already holding N days (`layer.commit_source`,
  the Delta transaction) vs the same rows written the way the manifest era did for a
  new day (one zstd Parquet part + a day manifest, no other source to compare with:
  the least it did), at N = `--days` values;
- end to end (`--end-to-end`): one new day's CSV through `ingest.ingest_batch` (parse, the
  suite's rules, the Delta commit, the ledger) into the table holding N days, in rows/s;
- read: `load_validated` of one entity's last 7 days at a table of 30 and of 90 days
  (ratio 90/30: ~1 when pruning works).

    nice -n 10 .venv/bin/python benchmarks/delta_tables.py [--entities 16] [--days 1 30 90]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl

from benchmarks.ingest_throughput import config
from schemas import arrow as arrow_schemas
from tasks.data import ingest, layer
from tasks.store import Store, json_bytes

START = datetime(2026, 1, 5)


def day_rows(entities: int, sensors: int, day: int) -> pl.DataFrame:
    """One day of the fleet at 1-minute steps (values do not matter to a commit)."""
    n = 1440
    t0 = START + timedelta(days=day)
    frame = pl.DataFrame({"timestamp": pl.datetime_range(t0, t0 + timedelta(minutes=n - 1),
                                                         "1m", eager=True, time_unit="us")})
    frame = frame.join(pl.DataFrame({"entity": [f"m{e:03d}" for e in range(entities)]}),
                       how="cross")
    values = {f"s{i:02d}": (pl.int_range(pl.len()) % (97 + i)).cast(pl.Float64)
              for i in range(sensors)}
    return frame.with_columns(**values, label=pl.lit(0, pl.Int8)).sort("entity", "timestamp")


def manifest_era(store: Store, cfg, rows: pl.DataFrame, day: date) -> None:
    """What committing a new day cost before the tables: a part and a manifest."""
    table = rows.to_arrow().cast(arrow_schemas.validated_schema(cfg))
    key = f"{layer.partition_key(cfg, day)}/part-source.parquet"
    store.write_parquet(key, table)
    store.write_bytes(f"{layer.partition_key(cfg, day)}/_manifest.json",
                      json_bytes({"parts": {"source": {"key": key, "rows": rows.height}}}))


def fill(store: Store, cfg, entities: int, sensors: int, days: int, have: int) -> None:
    for d in range(have, days):
        layer.commit_source(store, cfg, f"file:///feed/{d}.csv", day_rows(entities, sensors, d), [])


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=16)
    parser.add_argument("--sensors", type=int, default=38)
    parser.add_argument("--days", type=int, nargs="+", default=[1, 30, 90])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--end-to-end", action="store_true",
                        help="also ingest one new day's CSV end to end at each size")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nightowl-delta-bench-"))
    try:
        cfg = config(work / "raw", args.sensors)
        store = Store(f"file://{work}/store")
        rows_per_day = args.entities * 1440
        print(f"{args.entities} entities x {args.sensors} sensors, {rows_per_day:,} rows a day")
        have, reads = 0, {}
        if args.end_to_end:  # imports and the suite's first build, untimed
            warm = work / "raw" / "warm-up.csv"
            warm.parent.mkdir(parents=True, exist_ok=True)
            day_rows(1, args.sensors, 150).write_csv(warm)
            ingest.ingest_batch(store, cfg, f"file://{warm}")
        for days in sorted(args.days):
            fill(store, cfg, args.entities, args.sensors, days, have)
            have = days
            new = day_rows(args.entities, args.sensors, days + 1000)  # far from the others
            day = new["timestamp"].dt.date()[0]
            delta, manifest = [], []
            for i in range(args.repeats):
                source = f"file:///bench/{days}-{i}.csv"
                delta.append(timed(layer.commit_source, store, cfg, source, new, []))
                layer.commit_source(store, cfg, source, new.head(0), [day])  # take it back out
                manifest.append(timed(manifest_era, Store(f"file://{work}/old-{days}-{i}"), cfg,
                                      new, day))
            d, m = statistics.median(delta), statistics.median(manifest)
            print(f"commit 1 day into {days:3d} days: delta {d:6.3f} s "
                  f"({rows_per_day / d:>10,.0f} rows/s), manifest era {m:6.3f} s, "
                  f"ratio delta/manifest {d / m:.2f}")
            if args.end_to_end:
                csv = work / "raw" / f"new-{days}.csv"
                csv.parent.mkdir(parents=True, exist_ok=True)
                fresh = day_rows(args.entities, args.sensors, days + 200)  # past, not yet held
                fresh.write_csv(csv)
                started = time.perf_counter()
                outcome = ingest.ingest_batch(store, cfg, f"file://{csv}")
                seconds = time.perf_counter() - started
                assert outcome.status == "validated" and outcome.rows == rows_per_day, outcome
                print(f"ingest 1 day's CSV end to end into {days:3d} days: {seconds:6.3f} s "
                      f"({rows_per_day / seconds:>10,.0f} rows/s, "
                      f"{csv.stat().st_size / 2**20:,.0f} MiB of CSV)")
            if days >= 7:
                end = START + timedelta(days=days)
                reads[days] = statistics.median(
                    timed(layer.load_validated, store, cfg, end - timedelta(days=7), end, ["m000"])
                    for _ in range(args.repeats))
                print(f"read one entity's last 7 days at {days:3d} days: {reads[days]:.3f} s")
        if len(reads) >= 2:
            lo, hi = min(reads), max(reads)
            print(f"read ratio {hi}/{lo} days: {reads[hi] / reads[lo]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
