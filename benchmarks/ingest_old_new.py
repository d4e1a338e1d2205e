"""Ingestion end to end, the manifest era's code against today's, on the same day CSVs.

The issue's promise: the Delta table path is no slower than the path it replaced at 1
day. That path's code is gone from the tree, so it is taken from git (`--baseline`,
default 1c7570c: main just before the tables landed) into a temporary folder, and each
path runs `tasks.data.ingest.ingest_batch` in its own process with its own code first on
PYTHONPATH, kept alive. Each process imports, builds the suite and warms up on a tiny CSV
untimed; then, into a fresh store per repeat:

- day 1: one day's CSV into an empty store (the first day: table or manifest created);
- day 2: the next day's CSV into the store holding day 1.

Each ingestion of one path runs right next to the same ingestion of the other (old, new,
then new, old on the next repeat), so both see the same load on a shared machine; the
medians and the median of the paired ratios new/old are printed (> 1: new is slower).
The CSV is the 695-entity x 38-sensor fleet at 1-minute steps (1,000,800 rows a day).
`--values int` (default): integer-valued sensors, ~215 MiB a day, as benchmarks/delta_tables.py;
`--values float`: normal random values with 4 decimals (values that rarely repeat, as
real sensors'), ~320 MiB.

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


def worker(sensors: int, warm: str) -> None:
    """Runs in the child, with either tree's code first on the path: reads one JSON request
    a line ({"store": folder, "csv": path}), ingests it, answers with the seconds it took."""
    import tomllib

    from schemas.config import default_config_path, parse_config
    from tasks.data import ingest
    from tasks.store import Store

    data = tomllib.loads(default_config_path().read_text())
    data["source"] = {"path": str(Path(warm).parent / "*.csv"), "format": "csv"}
    data["columns"]["features"] = [f"s{i:02d}" for i in range(sensors)]
    cfg = parse_config(data, origin="benchmark")
    warm_store = tempfile.mkdtemp(prefix="warm-", dir=Path(warm).parent)  # this worker's own
    assert ingest.ingest_batch(Store(f"file://{warm_store}"), cfg, f"file://{warm}").rows > 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        started = time.perf_counter()
        outcome = ingest.ingest_batch(Store(f"file://{request['store']}"), cfg,
                                      f"file://{request['csv']}")
        seconds = time.perf_counter() - started
        assert outcome.status == "validated", outcome.reasons
        print(json.dumps({"seconds": seconds, "rows": outcome.rows}), flush=True)


class Worker:
    """One tree's worker process, kept alive so that both trees' ingestions can alternate
    one by one (a few seconds apart: the same machine load for both)."""

    def __init__(self, root: Path, sensors: int, warm: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(sensors), str(warm)], env=env, cwd=root,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.answer()

    def answer(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.process.wait()}")
        return json.loads(line)

    def ingest(self, store: Path, csv: Path) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"store": str(store), "csv": str(csv)}) + "\n")
        self.process.stdin.flush()
        return self.answer()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def extract(commit: str, into: Path) -> Path:
    """The tree of `commit` (code only: tasks/, schemas/, models/) in a folder."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", commit, "tasks", "schemas", "models"],
                         check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=695)
    parser.add_argument("--sensors", type=int, default=38)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE, help="git commit of the old path")
    parser.add_argument("--values", choices=["int", "float"], default="int")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import numpy as np
    import polars as pl

    from benchmarks.delta_tables import day_rows

    work = Path(tempfile.mkdtemp(prefix="nightowl-ingest-old-new-"))
    try:
        roots = {"old": extract(args.baseline, work / "old-code"), "new": REPO}
        raw = work / "raw"
        raw.mkdir()
        csvs = [raw / f"day-{d}.csv" for d in (1, 2)]
        for d, csv in enumerate(csvs):
            rows = day_rows(args.entities, args.sensors, d)
            if args.values == "float":
                rng = np.random.default_rng(d)
                rows = rows.with_columns(pl.Series(c, rng.normal(size=rows.height).round(4))
                                         for c in rows.columns if c.startswith("s"))
            rows.write_csv(csv)
        warm = work / "warm" / "warm.csv"
        warm.parent.mkdir()
        day_rows(1, args.sensors, 150).write_csv(warm)
        mib = csvs[0].stat().st_size / 2**20
        paths = {name: Worker(root, args.sensors, warm) for name, root in roots.items()}
        runs: dict[str, list[list[float]]] = {"old": [], "new": []}
        rows = 0
        try:
            for i in range(args.repeats):
                order = ("old", "new") if i % 2 == 0 else ("new", "old")
                seconds: dict[str, list[float]] = {name: [] for name in order}
                for csv in csvs:  # day 1 into an empty store, then day 2 beside it
                    for name in order:
                        result = paths[name].ingest(work / f"store-{name}-{i}", csv)
                        seconds[name].append(result["seconds"])
                        rows = result["rows"]
                for name in order:
                    runs[name].append(seconds[name])
                    shutil.rmtree(work / f"store-{name}-{i}", ignore_errors=True)
                print(f"  repeat {i + 1}: " + ", ".join(
                    f"{name} day 1 {seconds[name][0]:.2f} s day 2 {seconds[name][1]:.2f} s"
                    for name in ("old", "new")), flush=True)
        finally:
            for path in paths.values():
                path.close()
        print(f"{args.entities} entities x {args.sensors} sensors, {rows:,} rows a day, "
              f"{mib:.0f} MiB of CSV ({args.values} values); old = {args.baseline}; {args.repeats} repeats, each "
              "ingestion next to its counterpart")
        for d, label in enumerate(("day 1 (empty store)", "day 2 (store holds day 1)")):
            old = statistics.median(r[d] for r in runs["old"])
            new = statistics.median(r[d] for r in runs["new"])
            paired = statistics.median(n[d] / o[d] for n, o in zip(runs["new"], runs["old"]))
            print(f"{label:26s} median old {old:6.2f} s ({rows / old:>9,.0f} rows/s), "
                  f"new {new:6.2f} s ({rows / new:>9,.0f} rows/s); new/old {new / old:.2f} "
                  f"(median of paired ratios {paired:.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(int(sys.argv[2]), sys.argv[3])
    else:
        main()
