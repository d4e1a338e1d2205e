"""Small in-memory signals the model-level tests share (no I/O, deterministic)."""

from __future__ import annotations

import torch

from models.engine import WindowSet


def sine_series(t: int, features: int, seed: int = 0) -> torch.Tensor:
    """Correlated sinusoids plus noise, (T, F): easy to learn, so a spike stands out."""
    gen = torch.Generator().manual_seed(seed)
    steps = torch.arange(t, dtype=torch.float32)[:, None]
    return torch.sin(steps / 8 + torch.arange(features)) + 0.1 * torch.randn(t, features, generator=gen)


def every_window(series: torch.Tensor, length: int) -> WindowSet:
    """All stride-1 windows of a series."""
    return WindowSet(series, torch.arange(series.shape[0] - length + 1), length)
