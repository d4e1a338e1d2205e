"""Ingestion end to end, the manifest era's code against today's, on the same day CSVs.

The issue's promise: the Delta table path is no slower than the path it replaced at 1
day. That path's code is gone from the tree, so it is taken from git (`--baseline`,
default 1c7570c: main just before the tables landed) into a temporary folder, and each
path runs `tasks.data.ingest.ingest_batch` in its own process with its own code first on
PYTHONPATH. Each process imports, builds the suite and warms up on a tiny CSV untimed,
then times, into a fresh store:

- day 1: one day's CSV into an empty store (the first day: table or manifest created);
- day 2: the next day's CSV into the store holding day 1.

The two paths alternate (old, new, new, old, ...) `--repeats` times, so both see the same
load on a shared machine; medians and ratios new/old are printed (> 1: new is slower).
The CSV is the 695-entity x 38-sensor fleet at 1-minute steps (1,000,800 rows a day;
integer-valued sensors, ~215 MiB: the generator's floats would make ~730 MB).

    PYTHONPATH=. .venv/bin/python benchmarks/ingest_old_new.py [--entities 695] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASELINE = "1c7570c"


def worker(store_dir: str, sensors: int, warm: str, csvs: list[str]) -> None:
    """Runs in the child, with either tree's code first on the path: prints seconds per CSV."""
    import tomllib

    from schemas.config import default_config_path, parse_config
    from tasks.data import ingest
    from tasks.store import Store

    data = tomllib.loads(default_config_path().read_text())
    data["source"] = {"path": str(Path(csvs[0]).parent / "*.csv"), "format": "csv"}
    data["columns"]["features"] = [f"s{i:02d}" for i in range(sensors)]
    cfg = parse_config(data, origin="benchmark")
    ingest.ingest_batch(Store(f"file://{store_dir}-warm"), cfg, f"file://{warm}")
    store = Store(f"file://{store_dir}")
    seconds = []
    for csv in csvs:
        started = time.perf_counter()
        outcome = ingest.ingest_batch(store, cfg, f"file://{csv}")
        seconds.append(time.perf_counter() - started)
        assert outcome.status == "validated", outcome.reasons
    print(json.dumps({"seconds": seconds, "rows": outcome.rows}))


def extract(commit: str, into: Path) -> Path:
    """The tree of `commit` (code only: tasks/, schemas/, models/) in a folder."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", commit, "tasks", "schemas", "models"],
                         check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


def run(root: Path, store_dir: Path, sensors: int, warm: Path, csvs: list[Path]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(store_dir), str(sensors), str(warm),
         *map(str, csvs)], env=env, cwd=root, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=695)
    parser.add_argument("--sensors", type=int, default=38)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE, help="git commit of the old path")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from benchmarks.delta_tables import day_rows

    work = Path(tempfile.mkdtemp(prefix="nightowl-ingest-old-new-"))
    try:
        roots = {"old": extract(args.baseline, work / "old-code"), "new": REPO}
        raw = work / "raw"
        raw.mkdir()
        csvs = [raw / f"day-{d}.csv" for d in (1, 2)]
        for d, csv in enumerate(csvs):
            day_rows(args.entities, args.sensors, d).write_csv(csv)
        warm = work / "warm" / "warm.csv"
        warm.parent.mkdir()
        day_rows(1, args.sensors, 150).write_csv(warm)
        mib = csvs[0].stat().st_size / 2**20
        runs: dict[str, list[list[float]]] = {"old": [], "new": []}
        rows = 0
        for i in range(args.repeats):
            for name in (("old", "new") if i % 2 == 0 else ("new", "old")):
                result = run(roots[name], work / f"store-{name}-{i}", args.sensors, warm, csvs)
                runs[name].append(result["seconds"])
                rows = result["rows"]
                print(f"  repeat {i + 1} {name}: day 1 {result['seconds'][0]:.2f} s, "
                      f"day 2 {result['seconds'][1]:.2f} s", flush=True)
                shutil.rmtree(work / f"store-{name}-{i}", ignore_errors=True)
        print(f"{args.entities} entities x {args.sensors} sensors, {rows:,} rows a day, "
              f"{mib:.0f} MiB of CSV; old = {args.baseline}, median of {args.repeats}, alternated")
        for d, label in enumerate(("day 1 (empty store)", "day 2 (store holds day 1)")):
            old = statistics.median(r[d] for r in runs["old"])
            new = statistics.median(r[d] for r in runs["new"])
            print(f"{label:26s} old {old:6.2f} s ({rows / old:>9,.0f} rows/s)  "
                  f"new {new:6.2f} s ({rows / new:>9,.0f} rows/s)  new/old {new / old:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:])
    else:
        main()
