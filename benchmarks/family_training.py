"""Every trainable family: the chapter's loop vs the engine, same model, data and epochs.

The chapter's loop, re-implemented faithfully for any family: windows materialised
as an (N, L, F) array the way its `create_sequences` does, TensorDataset +
DataLoader(batch_size=64, shuffle=True), one `.item()` per step; scoring through a
DataLoader of 64 windows. The engine: the series resident once, windows as an
`unfold` view, shuffled index batches of 256, fused Adam; scoring batched. Both
train the same architecture for the same epochs with the family's own step (so
GANs and USAD keep their two-phase updates). Detection is measured the same way
for both (rows scored by the engine's row mapping on the validation rows), so
any difference comes from training.

    .venv/bin/python benchmarks/family_training.py [--epochs 3] [--max-windows 8000]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchData, smd, synthetic, table  # noqa: E402
from models.engine import EngineSettings, WindowSet, fit  # noqa: E402
from models.registry import FAMILIES, build_model  # noqa: E402
from models.scoring import row_contributions  # noqa: E402


def chapter_train(model, windows: np.ndarray, epochs: int) -> float:
    """DataLoader(batch 64) over materialised windows; the family's own optimisation step."""
    loader = DataLoader(TensorDataset(torch.from_numpy(windows)), batch_size=64, shuffle=True)
    optimizers = model.configure_optimizers(1e-3, 0.0)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        model.on_epoch_start(epoch)
        for (batch,) in loader:
            model.training_step(batch, optimizers, contextlib.nullcontext).item()
    return time.perf_counter() - t0


@torch.no_grad()
def chapter_score(model, windows: np.ndarray) -> float:
    """Per-window scores through a DataLoader of 64; returns seconds."""
    model.eval()
    t0 = time.perf_counter()
    for (batch,) in DataLoader(TensorDataset(torch.from_numpy(windows)), batch_size=64):
        model.element_scores(batch).sum(dim=(1, 2)).numpy()
    return time.perf_counter() - t0


def row_quality(model, series: torch.Tensor, length: int, val_from: int, labels: np.ndarray):
    starts = torch.arange(0, series.shape[0] - length + 1)
    contrib, _ = row_contributions(model, WindowSet(series, starts, length), batch_size=4096)
    s = np.nan_to_num(contrib.sum(1).numpy()[val_from:], nan=0.0)
    return float(roc_auc_score(labels, s)), float(average_precision_score(labels, s))


def bench(data: BenchData, family: str, length: int, epochs: int, max_windows: int) -> list[dict]:
    series = torch.from_numpy(np.concatenate([data.train, data.val]).astype(np.float32))
    n_train = len(data.train)
    rng = np.random.default_rng(0)
    starts = np.sort(rng.permutation(n_train - length + 1)[:max_windows])
    materialised = np.stack([data.train[s:s + length] for s in starts]).astype(np.float32)
    f = series.shape[1]
    rows = []

    torch.manual_seed(0)
    chapter = build_model(family, f, length, {})
    t_train = chapter_train(chapter, materialised, epochs)
    t_score = chapter_score(chapter, materialised)
    roc, pr = row_quality(chapter, series, length, n_train, data.val_labels)
    base = len(starts) * epochs / t_train, len(starts) / t_score
    rows.append({"data": data.name, "family": family, "loop": "chapter (DataLoader 64)",
                 "train windows/s": base[0], "train x": 1.0, "score windows/s": base[1],
                 "score x": 1.0, "val ROC-AUC": roc, "val PR-AUC": pr})

    torch.manual_seed(0)
    ours = build_model(family, f, length, {})
    settings = EngineSettings(epochs=epochs, batch_size=256, lr=1e-3, patience=epochs + 1,
                              holdout_fraction=0.02)
    result = fit(ours, WindowSet(series, torch.from_numpy(starts), length), settings)
    windows = WindowSet(series, torch.from_numpy(starts), length)
    t0 = time.perf_counter()
    row_contributions(ours, windows, batch_size=4096)
    t_score = time.perf_counter() - t0
    roc, pr = row_quality(ours, series, length, n_train, data.val_labels)
    rows.append({"data": data.name, "family": family, "loop": "engine (index batches 256)",
                 "train windows/s": result.samples_per_s, "train x": result.samples_per_s / base[0],
                 "score windows/s": len(starts) / t_score,
                 "score x": len(starts) / t_score / base[1], "val ROC-AUC": roc, "val PR-AUC": pr})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--max-windows", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default="smd,synthetic")
    trainable = [n for n, cls in sorted(FAMILIES.items()) if cls.trainable]
    parser.add_argument("--families", default=",".join(trainable))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    loaders = {"smd": smd, "synthetic": synthetic}
    rows = []
    for name in args.data.split(","):
        data = loaders[name]()
        for family in args.families.split(","):
            rows += bench(data, family, args.window, args.epochs, args.max_windows)
            print(rows[-2]["data"], family, f"{rows[-1]['train x']:.1f}x", flush=True)
    print(table(rows, ["data", "family", "loop", "train windows/s", "train x", "score windows/s",
                       "score x", "val ROC-AUC", "val PR-AUC"]))


if __name__ == "__main__":
    main()
