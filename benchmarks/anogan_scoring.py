"""AnoGAN scoring: the chapter's per-batch latent search vs our batched search vs encoder mode.

One GAN (+ encoder) is trained per data set on the shared engine (rows, L = 1);
then validation rows are scored by
  (a) chapter: a faithful re-implementation of its find_latent_code (batches of 64,
      z ~ N(0, 1), 500 Adam steps at lr 0.01, lambda 0.1, mean-based losses,
      a Python loop over batches); timed on a stratified subset of rows because
      it is slow; rows/s = subset rows / subset seconds (the loop is per batch,
      so its cost is linear in rows and the rate extrapolates);
  (b) ours, batched search: mode="search", the whole batch's z at once, warm
      start z0 = E(x), `search_steps` steps (default 100);
  (b2) ours, batched search with the chapter's settings (random z0, 500 steps),
      to separate the gain of batching from that of the warm start;
  (c) ours, encoder mode: z* = E(x), one forward pass.
ROC-AUC / PR-AUC are reported on the same subset for every method (and on all
validation rows for the fast ones), so speed never comes from worse detection.

    .venv/bin/python benchmarks/anogan_scoring.py [--data smd,synthetic] [--epochs 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchData, smd, synthetic, table
from models.anogan import AnoGAN
from models.engine import EngineSettings, WindowSet, fit
from models.registry import build_model
from tasks.versions import model_from_bytes, weights_bytes

LOADERS = {"smd": smd, "synthetic": synthetic}


def train_gan(data: BenchData, epochs: int) -> AnoGAN:
    """GAN + encoder on the normal training rows (L = 1), on the shared engine."""
    series = torch.from_numpy(data.train)
    windows = WindowSet(series, torch.arange(len(series)), 1)
    torch.manual_seed(0)
    model = build_model("anogan", series.shape[1], 1, {})
    settings = EngineSettings(epochs=epochs, batch_size=256, lr=1e-3, patience=epochs, seed=0)
    result = fit(model, windows, settings)
    print(f"  {data.name}: trained {result.epochs_run} epochs in {result.seconds:.1f}s, "
          f"best izif holdout {result.best_holdout:.4f} (epoch {result.best_epoch + 1})")
    return model


def chapter_find_latent_code(model: AnoGAN, x: torch.Tensor, n_iterations: int = 500,
                             lr: float = 0.01, lambda_weight: float = 0.1) -> np.ndarray:
    """The chapter's find_latent_code, line for line, on our G and D's feature layer."""
    generator, features = model.generator, model.features
    z = torch.randn(x.size(0), model.params.latent, requires_grad=True)
    optimizer = torch.optim.Adam([z], lr=lr)
    for _ in range(n_iterations):
        optimizer.zero_grad()
        g_z = generator(z)
        residual_loss = torch.mean(torch.abs(x - g_z))
        feat_real, feat_fake = features(x), features(g_z)
        discrimination_loss = torch.mean(torch.abs(feat_real - feat_fake))
        loss = (1 - lambda_weight) * residual_loss + lambda_weight * discrimination_loss
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        g_z = generator(z)
        residual = torch.mean(torch.abs(x - g_z), dim=1)
        discrimination = torch.mean(torch.abs(features(x) - features(g_z)), dim=1)
        return ((1 - lambda_weight) * residual + lambda_weight * discrimination).numpy()


def chapter_scores(model: AnoGAN, rows: np.ndarray, batch: int = 64) -> np.ndarray:
    """The chapter's usage: a Python loop over batches of 64, each searched separately."""
    torch.manual_seed(0)
    parts = [chapter_find_latent_code(model, torch.from_numpy(rows[i : i + batch]))
             for i in range(0, len(rows), batch)]
    return np.concatenate(parts)


def our_scores(model: AnoGAN, rows: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Window scores (sum of element scores), batched on the device."""
    x = torch.from_numpy(rows)[:, None, :]  # (N, 1, F)
    with torch.no_grad():
        return torch.cat([model.element_scores(x[i : i + batch]).sum(dim=(1, 2))
                          for i in range(0, len(x), batch)]).numpy()


def with_params(model: AnoGAN, **changes) -> AnoGAN:
    args = model.arguments()
    return model_from_bytes({**args, "params": {**args["params"], **changes}},
                            weights_bytes(model), torch.device("cpu"))


def stratified_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n row positions with the validation set's anomaly share (at least 10% anomalies)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = min(len(pos), max(int(n * 0.1), int(n * labels.mean())))
    pick = np.concatenate([rng.choice(pos, n_pos, replace=False),
                           rng.choice(neg, n - n_pos, replace=False)])
    return np.sort(pick)


def timed(fn, *args) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def aucs(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return roc_auc_score(labels, scores), average_precision_score(labels, scores)


def bench(data: BenchData, epochs: int, subset_rows: int) -> list[dict]:
    model = train_gan(data, epochs)
    sub = stratified_subset(data.val_labels, subset_rows)
    x_sub, y_sub = data.val[sub], data.val_labels[sub]
    methods = {
        "(a) chapter: per-batch search, 64 x 500 steps": (lambda r: chapter_scores(model, r), False),
        "(b) ours: batched search, z0=E(x), 100 steps": (
            lambda r: our_scores(with_params(model, mode="search"), r), True),
        "(b2) ours: batched search, random z0, 500 steps": (
            lambda r: our_scores(with_params(model, mode="search", search_init="random",
                                             search_steps=500), r), False),
        "(c) ours: encoder mode, one pass": (lambda r: our_scores(model, r), True),
    }
    rows, base = [], None
    for name, (score, full) in methods.items():
        s_sub, sec = timed(score, x_sub)
        rate = len(x_sub) / sec
        row = {"data": data.name, "method": name, "rows timed": len(x_sub), "rows/s": rate}
        if full:  # fast enough for all validation rows: time those instead
            s_all, sec_all = timed(score, data.val)
            row |= {"rows timed": len(data.val), "rows/s": len(data.val) / sec_all}
            row["ROC-AUC all"], row["PR-AUC all"] = aucs(s_all, data.val_labels)
        base = base or row["rows/s"]
        row["speed vs (a)"] = f"{row['rows/s'] / base:,.1f}x"
        row["ROC-AUC subset"], row["PR-AUC subset"] = aucs(s_sub, y_sub)
        rows.append(row)
        print(f"  {name}: {row['rows/s']:,.0f} rows/s, subset ROC-AUC {row['ROC-AUC subset']:.3f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="smd,synthetic")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--subset", type=int, default=640, help="rows scored by (a) and (b2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every method (1: on a shared, loaded 2-core box "
                             "2 threads made small ops ~20x slower through OpenMP waits)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rows = []
    for name in args.data.split(","):
        print(f"loading {name} ...")
        rows += bench(LOADERS[name](), args.epochs, args.subset)
    cols = ["data", "method", "rows timed", "rows/s", "speed vs (a)", "ROC-AUC subset",
            "PR-AUC subset", "ROC-AUC all", "PR-AUC all"]
    print()
    print(table(rows, cols))


if __name__ == "__main__":
    main()
