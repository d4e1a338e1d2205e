"""Shared data loading for the benchmarks: SMD machine-2-1 and the synthetic fleet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class BenchData:
    """Standardised rows: train (normal), validation rows with labels."""

    name: str
    train: np.ndarray  # (N, F) float32
    val: np.ndarray  # (M, F) float32
    val_labels: np.ndarray  # (M,) int


def smd(machine: str = "machine-2-1", root: Path = SHARED_DATA / "smd") -> BenchData:
    """SMD: train file is normal; the test file with its labels is the validation set."""
    train = np.loadtxt(root / "train" / f"{machine}.txt", delimiter=",", dtype=np.float32)
    test = np.loadtxt(root / "test" / f"{machine}.txt", delimiter=",", dtype=np.float32)
    labels = np.loadtxt(root / "test_label" / f"{machine}.txt", dtype=np.int64)
    mu, sd = train.mean(0), train.std(0)
    sd[sd < 1e-6] = 1.0
    return BenchData(f"smd/{machine}", (train - mu) / sd, np.clip((test - mu) / sd, -1e3, 1e3), labels)


def synthetic() -> BenchData:
    """The demo's synthetic fleet: clean days train, the later days validate."""
    from schemas.config import default_config_path, load_config
    from tasks.data.synthetic import generate

    cfg = load_config(default_config_path())
    frame, _ = generate(cfg.source.synthetic)
    frame = frame.sort(["entity", "timestamp"])
    feats = cfg.columns.features
    is_train = (frame["timestamp"] < cfg.splits.train.end).to_numpy()
    x = frame.select(feats).to_numpy().astype(np.float32)
    mu, sd = x[is_train].mean(0), x[is_train].std(0)
    x = (x - mu) / sd
    labels = frame["label"].to_numpy()
    return BenchData("synthetic", x[is_train & (labels == 0)], x[~is_train], labels[~is_train])


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of the given rows."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "\n".join("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows)
    return head + body


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}"
    return "" if v is None else str(v)


__all__ = ["BenchData", "smd", "synthetic", "table", "pl"]
