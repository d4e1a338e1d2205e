"""Nightly scoring without torch: ONNX Runtime vs torch throughput per family, and the
scoring install's size and install time against the training install's.

Per family (AnoGAN in both modes), on SMD machine-2-1 (38 features, window 32, the
loader's defaults): a briefly trained model (throughput does not depend on how well it
learned), its ONNX graph checked by the export rule on real test rows, then every
test row scored through the production row path (tasks.scoring.raw_contributions)
by torch (`torch.set_num_threads(n)`) and by ONNX Runtime (`intra_op_num_threads =
n`), for n = 1 and 2. Rows/s is the median of `--repeats` alternating runs; the
ratio ONNX/torch is the number to read (the box is shared and noisy). For the dense
families the arithmetic per row (multiply-adds of the Linear layers, PCA's two
projections) says what 1,000,000 rows/s would need in GFLOP/s, against what the
measured rate achieves.

With `--venvs`, two fresh venvs are built from this checkout with the project's
lock (constraints.txt): `nightowl[scoring]` and torch + `nightowl[train]` (what
infra/Dockerfile.scoring and infra/Dockerfile install; Docker itself is not
available here, so the venvs stand in for the images, whose common base layer adds
the same ~130 MB to both); their install time (wall clock, and the CPU seconds pip used) and size (du) are reported.

    .venv/bin/python benchmarks/onnx_scoring.py [--families dense_ae,pca] [--repeats 3]
        [--rows 0] [--venvs] [--out benchmarks/results/onnx_scoring.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import BenchData, smd, synthetic, table  # noqa: E402
from models.base import WindowModel  # noqa: E402
from models.engine import EngineSettings, WindowSet, fit  # noqa: E402
from models.registry import FAMILIES, build_model  # noqa: E402
from tasks.scoring import DEFAULT_ROW_RULE, OnnxScorer, raw_contributions  # noqa: E402
from tasks.training.export import check_export, export_onnx  # noqa: E402
from tasks.training.probe import Probe  # noqa: E402
from tasks.versions import model_from_bytes, weights_bytes  # noqa: E402

LOADERS = {"smd": smd, "synthetic": synthetic}
WINDOW = 32
DENSE = {"dense_ae", "vae", "usad", "anogan", "pca"}
SEARCH_ROWS = 500  # AnoGAN's search runs 100 steps per window: a subset keeps it minutes


def trained(name: str, data: BenchData, epochs: int, max_windows: int) -> WindowModel:
    """A family fitted briefly on the normal training rows; "anogan-search" is AnoGAN's
    weights scored by latent search."""
    family, _, mode = name.partition("-")
    series = torch.from_numpy(data.train)
    windows = WindowSet(series, torch.arange(len(series) - WINDOW + 1), WINDOW)
    torch.manual_seed(0)
    model = build_model(family, series.shape[1], WINDOW, {})
    fit(model, windows, EngineSettings(epochs=epochs, batch_size=256, patience=epochs, seed=0,
                                       device="cpu", max_train_windows=max_windows))
    if mode:
        args = model.arguments()
        model = model_from_bytes({**args, "params": {**args["params"], "mode": mode}},
                                 weights_bytes(model), torch.device("cpu"))
    return model.eval()


def frame_of(rows: np.ndarray) -> pl.DataFrame:
    """One machine's rows as the scoring path reads them (sorted, one entity)."""
    return pl.DataFrame({"entity": ["m"] * len(rows),
                         **{f"f{i}": rows[:, i] for i in range(rows.shape[1])}})


def rows_per_s(scorer: object, frame: pl.DataFrame, repeats: int) -> list[float]:
    features = [c for c in frame.columns if c != "entity"]
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        raw_contributions(scorer, frame, features, WINDOW, rule=DEFAULT_ROW_RULE)
        out.append(frame.height / (time.perf_counter() - started))
    return out


def macs_per_row(model: WindowModel) -> int | None:
    """Multiply-adds per window (= per row at stride 1) of the dense families' scoring pass."""
    if model.name == "pca":
        return 2 * model.components.numel()
    if model.name not in DENSE or getattr(model.params, "mode", "encoder") != "encoder":
        return None
    skip = ("critic",)  # AnoGAN's logit is not on the scoring path
    return sum(m.in_features * m.out_features for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not n.startswith(skip))


def measure(name: str, data: BenchData, args: argparse.Namespace) -> dict[str, object]:
    model = trained(name, data, args.epochs, args.max_windows)
    rows = data.val if not args.rows else data.val[: args.rows]
    if name == "anogan-search":
        rows = rows[:SEARCH_ROWS]
    frame = frame_of(rows)
    graph = export_onnx(model)
    # The export rule on real rows: the whole scored set is one probe block, and the
    # threshold is the 99th percentile of torch's row scores on it.
    probe = Probe(rows[:4096], np.zeros(min(len(rows), 4096), np.int32), f"{data.name} test rows")
    torch.set_num_threads(2)
    scores = raw_contributions(model, frame_of(probe.series), [f"f{i}" for i in
                                                               range(rows.shape[1])], WINDOW,
                               rule=DEFAULT_ROW_RULE)
    threshold = float(np.nanquantile(scores.sum(axis=1), 0.99))
    _, outcome = check_export(model, probe, threshold)
    out: dict[str, object] = {
        "family": name, "rows": len(rows), "graph_kb": len(graph) / 1024,
        "exported": outcome.exported, "row_max_rel_diff": outcome.row_max_rel_diff,
        "verdict_flips": outcome.verdict_flips, "flagged_rows": outcome.flagged_rows,
    }
    for threads in (1, 2):
        torch.set_num_threads(threads)
        onnx = OnnxScorer(graph, threads)
        rows_per_s(onnx, frame.head(256), 1)  # warm-up, untimed
        rows_per_s(model, frame.head(256), 1)
        t_rates, o_rates = [], []
        for _ in range(args.repeats):  # alternate, so load changes hit both alike
            t_rates += rows_per_s(model, frame, 1)
            o_rates += rows_per_s(onnx, frame, 1)
        out[f"torch_{threads}t"] = statistics.median(t_rates)
        out[f"onnx_{threads}t"] = statistics.median(o_rates)
        out[f"ratio_{threads}t"] = out[f"onnx_{threads}t"] / out[f"torch_{threads}t"]
    macs = macs_per_row(model)
    if macs is not None:
        out["mflop_per_row"] = 2 * macs / 1e6
        out["gflops_for_1M_rows"] = 2 * macs * 1e6 / 1e9
        out["gflops_achieved_2t"] = 2 * macs * out["onnx_2t"] / 1e9
    print(f"  {name}: onnx/torch {out['ratio_1t']:.2f}x (1 thread), {out['ratio_2t']:.2f}x "
          f"(2), onnx {out['onnx_2t']:,.0f} rows/s on 2 threads; export "
          f"{'ok' if outcome.exported else 'REFUSED'}, rel diff {outcome.row_max_rel_diff:.2g}",
          flush=True)
    return out


def build_venv(extra: str, where: Path) -> dict[str, float]:
    """A fresh venv of this checkout with `extra` (torch first and pinned for `train`)."""
    started, cpu_before = time.perf_counter(), _children_cpu()
    py = where / "bin" / "python"
    steps = [[sys.executable, "-m", "venv", str(where)]]
    if extra == "train":
        steps.append([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"])
    steps.append([str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"),
                  f"{REPO}[{extra}]"])
    for step in steps:
        subprocess.run(step, check=True, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
    du = subprocess.run(["du", "-sm", str(where)], check=True, capture_output=True, text=True)
    has_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0
    return {"install_s": seconds, "install_cpu_s": cpu, "size_mb": float(du.stdout.split()[0]),
            "has_torch": has_torch}


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (steadier than wall time on a
    shared box)."""
    t = os.times()
    return t.children_user + t.children_system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="smd", choices=sorted(LOADERS))
    parser.add_argument("--families", default=",".join([*sorted(FAMILIES), "anogan-search"]))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-windows", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=0, help="score only the first N test rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--venvs", action="store_true", help="also build and measure both venvs")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)
    data = LOADERS[args.data]()
    print(f"{data.name}: {len(data.val):,} test rows, {data.val.shape[1]} features, window {WINDOW}")
    results: dict[str, object] = {"data": data.name, "families": []}
    for name in args.families.split(","):
        results["families"].append(measure(name, data, args))
    print(table(results["families"], ["family", "rows", "torch_1t", "onnx_1t", "ratio_1t",
                                      "torch_2t", "onnx_2t", "ratio_2t", "row_max_rel_diff",
                                      "verdict_flips", "exported"]))
    dense = [r for r in results["families"] if "mflop_per_row" in r]
    if dense:
        print(table(dense, ["family", "mflop_per_row", "gflops_for_1M_rows", "onnx_2t",
                            "gflops_achieved_2t"]))
    if args.venvs:
        with tempfile.TemporaryDirectory(prefix="nightowl-venvs-") as tmp:
            venvs = {extra: build_venv(extra, Path(tmp) / extra) for extra in ("scoring", "train")}
        venvs["size_ratio"] = venvs["scoring"]["size_mb"] / venvs["train"]["size_mb"]
        venvs["install_ratio"] = venvs["scoring"]["install_s"] / venvs["train"]["install_s"]
        results["venvs"] = venvs
        print(json.dumps(venvs, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
