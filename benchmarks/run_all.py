"""The benchmark suite in one command (`make bench`): every benchmark, its output kept.

Each benchmark is its own script with its own baseline measured in the same run
(ratios, never absolute times); this runner only calls them in turn, one process
each, and writes what each printed to benchmarks/results/<name>.txt. The GPU
benchmark runs only where CUDA is present. `--quick` shrinks every budget to a
smoke run (minutes) that checks the scripts still work, not their numbers.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only dense_ae_training,anogan_scoring]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATA = HERE.parents[1] / "shared" / "data"

# name -> (arguments of the full run, arguments of the quick run)
SUITE: dict[str, tuple[list[str], list[str]]] = {
    "dense_ae_training": ([], ["--epochs", "1", "--data", "synthetic"]),
    "anogan_scoring": ([], ["--epochs", "1", "--subset", "64", "--data", "synthetic"]),
    "family_training": ([], ["--epochs", "1", "--max-windows", "1000", "--data", "synthetic",
                             "--families", "dense_ae,lstm_ae"]),
    "detection_smd": (["-m", "flows.cli", "benchmark", "smd", str(DATA / "smd"), "--epochs", "20",
                       "--max-train-windows", "20000", "--baselines"],
                      ["-m", "flows.cli", "benchmark", "smd", str(DATA / "smd"), "--epochs", "1",
                       "--max-train-windows", "500", "--families", "pca,dense_ae"]),
    "dev_benchmark": ([], ["--quick", "--series", "odds:cardio", "--families", "pca,knn"]),
    "onnx_scoring": (["--venvs", "--out", str(RESULTS / "onnx_scoring.json")],
                     ["--data", "synthetic", "--families", "dense_ae,anogan-search", "--rows",
                      "1500", "--repeats", "1", "--epochs", "1", "--max-windows", "500"]),
    "ingest_throughput": ([], ["--entities", "16", "--repeats", "1"]),
    "ingest_old_new": ([], ["--entities", "8", "--repeats", "1"]),
    "delta_tables": (["--entities", "695", "--days", "1", "30", "90"],
                     ["--entities", "4", "--days", "1", "10", "--repeats", "1"]),
    "fleet": (["all"], ["night", "--entities", "16"]),
    "gpu_families": (["--out", str(RESULTS / "gpu_families.json")], ["--epochs", "1"]),
}
NEEDS_CUDA = {"gpu_families"}


def command(name: str, quick: bool) -> list[str]:
    full, short = SUITE[name]
    args = short if quick else full
    if args[:1] == ["-m"]:
        return [sys.executable, *args]
    return [sys.executable, str(HERE / f"{name}.py"), *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-run every benchmark")
    parser.add_argument("--only", default="", help="comma-separated names (default: all)")
    args = parser.parse_args(argv)
    import torch

    names = [n for n in args.only.split(",") if n] or list(SUITE)
    unknown = sorted(set(names) - set(SUITE))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; available: {', '.join(SUITE)}")
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name in names:
        if name in NEEDS_CUDA and not torch.cuda.is_available():
            print(f"-- {name}: skipped (no CUDA device here)")
            continue
        started = time.perf_counter()
        done = subprocess.run(command(name, args.quick), cwd=HERE.parent, text=True,
                              capture_output=True)
        out = RESULTS / f"{name}{'-quick' if args.quick else ''}.txt"
        out.write_text(done.stdout + ("\n" + done.stderr[-5000:] if done.returncode else ""))
        status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        print(f"-- {name}: {status} in {time.perf_counter() - started:.0f} s -> {out}")
        if done.returncode:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
