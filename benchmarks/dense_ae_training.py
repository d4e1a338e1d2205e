"""Dense AE: the chapter's DataLoader loop vs nightowl's engine, same model, same data, one run.

Every row trains the same DenseAE architecture (linear output, MSE, Adam) on the same
standardised rows. The chapter's loop is re-implemented faithfully: TensorDataset +
DataLoader(batch_size=64, shuffle=True), per-batch `.to(device)` and `loss.item()`,
per-sample errors through a DataLoader at scoring time. The engine runs three ways: with
the chapter's own batch/lr/epochs (isolates the loop itself), with large batches at the
same epochs, and with large batches at 6x the epochs (the setting we ship). Reported:
training samples/s, training wall time, scoring rows/s and validation ROC-AUC / PR-AUC,
each with its ratio to the chapter measured in the same run.

    .venv/bin/python benchmarks/dense_ae_training.py [--epochs 10] [--data smd,synthetic]
"""

from __future__ import annotations

import argparse
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
from models.registry import build_model  # noqa: E402
from models.scoring import row_contributions  # noqa: E402


def params(n_features: int) -> dict:
    """The chapter's shape rule: latent about 20% of the input, two hidden layers."""
    return {"hidden": [64, 32], "latent": max(2, n_features // 5)}


def chapter_train(model: torch.nn.Module, x: np.ndarray, epochs: int) -> float:
    """The chapter's train_autoencoder loop (MSE instead of its Sigmoid/BCE defect)."""
    loader = DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=64, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.MSELoss()
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        epoch_loss = 0.0
        for (batch,) in loader:
            batch = batch.to("cpu")
            recon = model(batch.unsqueeze(1)).squeeze(1)
            loss = criterion(recon, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch_loss += loss.item()
    return time.perf_counter() - t0


def chapter_score(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, float]:
    """The chapter's compute_reconstruction_errors: DataLoader batch 64, per-sample MSE."""
    loader = DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=64, shuffle=False)
    model.eval()
    errors: list[float] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for (batch,) in loader:
            recon = model(batch.unsqueeze(1)).squeeze(1)
            errors.extend(torch.mean((batch - recon) ** 2, dim=1).numpy())
    return np.array(errors), time.perf_counter() - t0


def ours_train(model, x: np.ndarray, epochs: int, batch: int, lr: float) -> tuple[float, int]:
    """The engine: the rows resident as one tensor, shuffled index batches; (seconds, samples)."""
    windows = WindowSet(torch.from_numpy(x), torch.arange(len(x)), 1)
    settings = EngineSettings(epochs=epochs, batch_size=batch, lr=lr, patience=epochs + 1,
                              holdout_fraction=0.05)
    result = fit(model, windows, settings)
    return result.seconds, result.train_windows * result.epochs_run


def ours_score(model, x: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    contrib, _ = row_contributions(model, WindowSet(torch.from_numpy(x), torch.arange(len(x)), 1),
                                   batch_size=8192)
    return contrib.sum(1).numpy(), time.perf_counter() - t0


def quality(data: BenchData, scores: np.ndarray) -> tuple[float, float]:
    return (float(roc_auc_score(data.val_labels, scores)),
            float(average_precision_score(data.val_labels, scores)))


def bench(data: BenchData, epochs: int, batch: int) -> list[dict]:
    f = data.train.shape[1]
    rows = []
    torch.manual_seed(0)
    chapter = build_model("dense_ae", f, 1, params(f))
    t = chapter_train(chapter, data.train, epochs)
    s, ts = chapter_score(chapter, data.val)
    roc, pr = quality(data, s)
    base = {"train": len(data.train) * epochs / t, "train s": t, "score": len(data.val) / ts}
    rows.append({"data": data.name, "loop": f"chapter (DataLoader, batch 64, {epochs} epochs)",
                 "train samples/s": base["train"], "train s": t, "score rows/s": base["score"],
                 "train x": 1.0, "wall x": 1.0, "score x": 1.0, "val ROC-AUC": roc, "val PR-AUC": pr})
    # (batch, lr, epochs): the chapter's own settings; then large batches with the linear
    # lr-scaling rule (16x batch -> 10x lr), at the same epochs and at 6x the epochs.
    variants = [(64, 1e-3, epochs), (batch, 1e-2, epochs), (batch, 1e-2, 6 * epochs)]
    for v_batch, lr, v_epochs in variants:
        torch.manual_seed(0)
        ours = build_model("dense_ae", f, 1, params(f))
        t_ours, seen = ours_train(ours, data.train, v_epochs, v_batch, lr)
        s, ts = ours_score(ours, data.val)
        roc, pr = quality(data, s)
        rows.append({"data": data.name,
                     "loop": f"nightowl engine (batch {v_batch}, lr {lr:g}, {v_epochs} epochs)",
                     "train samples/s": seen / t_ours, "train s": t_ours,
                     "train x": seen / t_ours / base["train"], "wall x": base["train s"] / t_ours,
                     "score rows/s": len(data.val) / ts, "score x": len(data.val) / ts / base["score"],
                     "val ROC-AUC": roc, "val PR-AUC": pr})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--data", default="smd,synthetic")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    loaders = {"smd": smd, "synthetic": synthetic}
    rows = [r for name in args.data.split(",") for r in bench(loaders[name](), args.epochs, args.batch)]
    print(table(rows, ["data", "loop", "train samples/s", "train x", "train s", "wall x",
                       "score rows/s", "score x", "val ROC-AUC", "val PR-AUC"]))


if __name__ == "__main__":
    main()
