"""Fleet scale: nightly wall time, rows/s, peak memory and orchestration share at fleet size;
training fan-out on the thread pool vs sequential vs a Dask LocalCluster; a scaling curve.

Each measurement runs in its own process (so peak RSS is that run's, not the benchmark's)
on the synthetic generator: N entities x 38 sensors at 1-minute steps (1,440 rows per
entity per day). A night is the whole nightly flow: ingest the night's CSV (GX suite),
plan, score shards with the champion, drift, alerts, artifacts, on Prefect's ephemeral API.
"Model share" is the time spent inside the model's forward passes over the night's wall
time; the rest is validation, I/O and orchestration.

    .venv/bin/python benchmarks/fleet.py night --entities 256
    .venv/bin/python benchmarks/fleet.py curve --entities 16,64,256
    .venv/bin/python benchmarks/fleet.py fanout --groups 8
    .venv/bin/python benchmarks/fleet.py all            # every table above, one run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

SENSORS = 38
TRAIN_DAYS, NIGHT = 2, "2026-01-08"  # days 0-1 train, day 2 validation, day 3 is the night


def fleet_config(root: Path, entities: int, **extra: Any) -> dict[str, Any]:
    features = [f"s{j:02d}" for j in range(SENSORS)]
    data: dict[str, Any] = {
        "name": "fleet",
        "source": {"path": str(root / "raw" / "*.csv"), "format": "csv",
                   "synthetic": {"entities": entities, "sensors": SENSORS, "days": 4,
                                 "freq_minutes": 1, "anomalies_per_entity": 2, "seed": 11,
                                 "start": "2026-01-05T00:00:00", "clean_days": 2}},
        "columns": {"features": features},
        "validation": {"value_min": -1e4, "value_max": 1e4},
        "window": {"length": 16, "stride": 4},
        "splits": {"train": {"start": "2026-01-05T00:00:00", "end": "2026-01-07T00:00:00"},
                   "validation": [{"start": "2026-01-07T00:00:00", "end": "2026-01-08T00:00:00"}]},
        "families": [{"name": "dense_ae", "params": {"hidden": [64], "latent": 8}}],
        "training": {"epochs": 1, "batch_size": 1024, "lr": 0.005, "max_train_windows": 20000,
                     "device": "cpu"},
        "store": {"root": f"file://{root / 'store'}"},
    }
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def write(root: Path, data: dict[str, Any]) -> str:
    from tests.tiny import write_config

    return write_config(root, data)


def child(args: list[str]) -> dict[str, Any]:
    """Run this script as a child process and return the JSON line it prints last."""
    done = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"{args} failed with exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# -- the child side: one measurement per process ----------------------------------------------


def prepare(root: Path, entities: int) -> str:
    """The feed, ingested, and a champion (not timed: the night is)."""
    from flows.train import train_flow
    from schemas.config import parse_config
    from tasks.data.synthetic import materialize

    data = fleet_config(root, entities)
    materialize(parse_config(data).source.synthetic, data["source"]["path"])
    night_file = root / "raw" / f"{NIGHT}.csv"
    held_back = night_file.with_suffix(".held")
    night_file.rename(held_back)  # the night's file arrives after training, as in production
    config = write(root, data)
    train_flow(config)
    held_back.rename(night_file)
    return config


def task_runs_since(since: datetime) -> list[tuple[str, datetime, datetime]]:
    """(name, start, end) of every task run that started after `since` (Prefect API)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    async def read() -> list[Any]:
        found: list[Any] = []
        async with get_client() as client:
            while True:  # the API pages at 200
                page = await client.read_task_runs(task_run_filter=TaskRunFilter(
                    start_time=TaskRunFilterStartTime(after_=since)), limit=200,
                    offset=len(found))
                found += page
                if len(page) < 200:
                    return found

    return [(r.name.rsplit("-", 1)[0], r.start_time, r.end_time) for r in asyncio.run(read())
            if r.start_time and r.end_time]


def busy_seconds(runs: list[tuple[str, datetime, datetime]]) -> float:
    """Length of the union of task-run intervals: time in which some task was running."""
    total, end = 0.0, None
    for _, a, b in sorted(runs, key=lambda r: r[1]):
        if end is None or a > end:
            total += (b - a).total_seconds()
            end = b
        elif b > end:
            total += (b - end).total_seconds()
            end = b
    return total


def run_night(root: Path, entities: int) -> dict[str, Any]:
    """The night alone, in a process of its own (training ran in another: peak RSS is the
    night's), with the Prefect API already up (as a production server is)."""
    from datetime import date

    from prefect import flow

    from flows.nightly import nightly_flow

    flow(name="warm-up")(lambda: None)()  # starts the ephemeral API outside the timing
    config = str(root / "tiny.toml")
    since = datetime.now(UTC)
    started = time.perf_counter()
    night = nightly_flow(config, date.fromisoformat(NIGHT))
    wall = time.perf_counter() - started
    runs = task_runs_since(since)
    stages: dict[str, float] = {}
    for name, a, b in runs:
        stages[name] = stages.get(name, 0.0) + (b - a).total_seconds()
    rows = night["scoring"]["rows"]
    return {"entities": entities, "rows": rows, "wall_s": wall, "rows_per_s": rows / wall,
            "model_s": night["scoring"]["model_seconds"], "stages_s": stages,
            "orchestration_s": wall - busy_seconds(runs),
            "shards": night["plan"]["shards"], "anomalies": night["scoring"]["anomalies"],
            "peak_rss_gib": peak_rss_gib()}


def run_fanout(root: Path, groups: int, kind: str, workers: int) -> dict[str, Any]:
    from flows.train import train_flow
    from schemas.config import parse_config
    from tasks.data.synthetic import materialize
    from tasks.store import Store

    entities = 2 * groups
    data = fleet_config(root, entities,
                        model={"scope": "group", "fallback": False, "groups": {
                            f"g{g}": [f"machine-{2 * g:02d}", f"machine-{2 * g + 1:02d}"]
                            for g in range(groups)}},
                        runner={"kind": kind, "max_workers": workers, "n_workers": workers})
    data["source"]["synthetic"]["freq_minutes"] = 5
    data["families"] = [{"name": "dense_ae", "params": {"hidden": [64], "latent": 8}},
                        {"name": "vae"}, {"name": "pca"}]
    data["training"].update(epochs=3)
    materialize(parse_config(data).source.synthetic, data["source"]["path"])
    config = write(root, data)
    started = time.perf_counter()
    result = train_flow(config)
    wall = time.perf_counter() - started
    store = Store(data["store"]["root"])
    digest = sorted(store.read_json(k)["files"]["weights.safetensors"]["sha256"]
                    for k in store.list("models/fleet/groups") if k.endswith("MANIFEST.json"))
    return {"kind": kind, "workers": workers, "groups": groups, "wall_s": wall,
            "scopes": len(result["scopes"]), "weights": digest}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["night", "curve", "fanout", "all",
                                         "_prepare", "_night", "_fanout"])
    parser.add_argument("--root", default=None, help="(children) the working folder")
    parser.add_argument("--entities", default="256")
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--kind", default="thread")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--million", action="store_true", help="night: add a >= 1,000,000-row night")
    args = parser.parse_args(argv)
    if args.what.startswith("_"):  # a child
        root = Path(args.root)
        if args.what == "_prepare":
            out: dict[str, Any] = {"config": prepare(root, int(args.entities))}
        elif args.what == "_night":
            out = run_night(root, int(args.entities))
        else:
            out = run_fanout(root, args.groups, args.kind, args.workers)
        print(json.dumps(out))
        return
    if args.what in ("night", "curve", "all"):
        sizes = [int(n) for n in args.entities.split(",")]
        if args.what == "all":
            sizes = [16, 64, 256]
        if args.million or args.what == "all":
            sizes.append(695)  # 695 x 1,440 = 1,000,800 rows
        print("| entities | rows | wall s | rows/s | ingest s | score s (model s) | drift+alert s "
              "| orchestration share | model share | peak RSS GiB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in sizes:
            with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
                child(["_prepare", "--entities", str(n), "--root", tmp])
                out = child(["_night", "--entities", str(n), "--root", tmp])
            st = out["stages_s"]
            print(f"| {n} | {out['rows']:,} | {out['wall_s']:.1f} | {out['rows_per_s']:,.0f} | "
                  f"{st.get('ingest-night', 0):.1f} | {st.get('score-shard', 0):.1f} "
                  f"({out['model_s']:.1f}) | {st.get('drift-check', 0) + st.get('alert', 0):.1f} | "
                  f"{out['orchestration_s'] / out['wall_s']:.0%} | "
                  f"{out['model_s'] / out['wall_s']:.0%} | {out['peak_rss_gib']:.2f} |", flush=True)
    if args.what in ("fanout", "all"):
        print("\n| runner | workers | groups x families | wall s | vs sequential | same weights |")
        print("|---|---:|---:|---:|---:|---|")
        runs = [("thread", 1), ("thread", 4), ("dask", 2)]
        results = []
        for kind, workers in runs:
            with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
                results.append(child(["_fanout", "--groups", str(args.groups), "--kind", kind,
                                      "--workers", str(workers), "--root", tmp]))
        base = results[0]
        for r in results:
            label = "sequential (1 thread)" if r["workers"] == 1 and r["kind"] == "thread" else \
                f"{'thread pool' if r['kind'] == 'thread' else 'Dask LocalCluster'}"
            print(f"| {label} | {r['workers']} | {r['groups']} x 3 | {r['wall_s']:.1f} | "
                  f"{base['wall_s'] / r['wall_s']:.2f}x | {r['weights'] == base['weights']} |",
                  flush=True)


if __name__ == "__main__":
    main()
