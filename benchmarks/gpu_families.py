"""Train and score every registered family on CUDA; print per-family samples/s.

Self-contained on purpose: it needs only torch, numpy, scikit-learn and pydantic
(what a bare GPU image has), not Prefect or polars, so it runs on any CUDA host:

    python benchmarks/gpu_families.py --out gpu.json          # CUDA, the default
    python benchmarks/gpu_families.py --device cpu --rows 20000 --epochs 1   # a dry run

Data: a synthetic fleet made here with numpy (38 correlated sensors, daily cycle,
noise; spikes, level shifts and stuck sensors injected in the second half), so the
validation ROC-AUC shows each family learned something while it is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.engine import EngineSettings, WindowSet, fit, pick_device  # noqa: E402
from models.registry import FAMILIES, build_model  # noqa: E402
from models.scoring import row_contributions  # noqa: E402


def fleet(rows: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(series (rows, F) standardised on the first half, labels (rows,))."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    drivers = np.stack([np.sin(2 * np.pi * t / 288), np.sin(2 * np.pi * t / 2016),
                        np.cos(2 * np.pi * t / 97)], axis=1)
    x = drivers @ rng.normal(0, 1, (3, features)) + rng.normal(0, 0.2, (rows, features))
    labels = np.zeros(rows, dtype=np.int64)
    for start in rng.integers(rows // 2, rows - 100, size=max(rows // 2000, 4)):
        length, f = int(rng.integers(5, 60)), rng.integers(0, features, 3)
        kind = rng.integers(3)
        if kind == 0:
            x[start:start + length, f] += 4.0
        elif kind == 1:
            x[start:start + length, f] = x[start, f]
        else:
            x[start:start + 2, f] += 8.0
        labels[start:start + length] = 1
    half = rows // 2
    x = (x - x[:half].mean(0)) / x[:half].std(0)
    return x.astype(np.float32), labels


def run_family(name: str, series: torch.Tensor, labels: np.ndarray, args: argparse.Namespace) -> dict:
    window = args.window
    half = series.shape[0] // 2
    train = WindowSet(series, torch.arange(0, half - window + 1, args.stride), window)
    model = build_model(name, series.shape[1], window, {})
    settings = EngineSettings(epochs=args.epochs, batch_size=args.batch, lr=1e-3, patience=99,
                              device=series.device.type, amp=not args.no_amp, compile=args.compile,
                              max_train_windows=args.max_train_windows)
    if series.device.type == "cuda":
        torch.cuda.synchronize()
    result = fit(model, train, settings)
    score_set = WindowSet(series, torch.arange(0, series.shape[0] - window + 1), window)
    if series.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    contrib, _ = row_contributions(model, score_set, batch_size=args.batch * 4)
    scores = contrib.sum(1)
    if series.device.type == "cuda":
        torch.cuda.synchronize()
    score_s = time.perf_counter() - t0
    s = scores.float().cpu().numpy()[half:]
    return {
        "family": name,
        "window": window,
        "epochs": result.epochs_run,
        "train_windows": result.train_windows,
        "train_samples_per_s": result.samples_per_s,
        "fit_s": result.seconds,
        "score_rows_per_s": len(score_set) / score_s,
        "val_roc_auc": float(roc_auc_score(labels[half:], np.nan_to_num(s, nan=0.0))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=38)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--max-train-windows", type=int, default=5000,
                        help="the nightly default; raise it to time throughput at fleet size")
    parser.add_argument("--families", default=",".join(sorted(FAMILIES)))
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    x, labels = fleet(args.rows, args.features)
    series = torch.from_numpy(x).to(device)
    info = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "rows": args.rows, "features": args.features,
            "window": args.window, "epochs": args.epochs, "batch": args.batch, "amp": not args.no_amp}
    print(json.dumps(info))
    results = []
    for name in args.families.split(","):
        t0 = time.perf_counter()
        try:
            r = run_family(name, series, labels, args)
        except Exception as err:  # report every family, even when one breaks
            r = {"family": name, "error": f"{type(err).__name__}: {err}"}
        r["wall_s"] = time.perf_counter() - t0
        results.append(r)
        print(json.dumps(r), flush=True)
    print("\n| family | train samples/s | score rows/s | fit s | val ROC-AUC |\n|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['family']} | error: {r['error'][:60]} | | | |")
        else:
            print(f"| {r['family']} | {r['train_samples_per_s']:,.0f} | {r['score_rows_per_s']:,.0f} "
                  f"| {r['fit_s']:.1f} | {r['val_roc_auc']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
