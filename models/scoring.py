"""Batched scoring: element scores of windows mapped back to rows.

Row rules (chosen at training, recorded in the version, `[window] row_rule`); the
names are those of issue 10's ablation (benchmarks/results/ablation.md):

- "mean_window" (the default): a row's contribution from feature f is the mean,
  over every scored window that contains the row, of that window's mean element
  score of f over its steps. A row is judged by every window it belongs to,
  whatever its step in them (issue 10's ablation: +0.12 to +0.17 validation
  PR-AUC for dense_ae, usad and pca on 9 of 10 dev series).
- "mean_elem": the mean, over the same windows, of the element score at the row's
  own step and feature f (the rule of versions registered before `row_rule` existed).
- "last_window": the per-feature step means of the one window that ends at the row
  (the reference chapter's rule); rows no window ends at are NaN.
- "max_window": the per-feature step means of the covering window whose total (raw,
  before per-feature normalisation) is largest; the earliest such window on ties.

Under every rule a row's score is the sum of its feature contributions, so the
per-feature explanation adds up to the score exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.base import WindowModel
from models.engine import WindowSet
from schemas.config import DEFAULT_ROW_RULE, ROW_RULES  # noqa: F401 - defined once, with the config

ElementScorer = Callable[[torch.Tensor], torch.Tensor]


def check_rule(rule: str) -> str:
    if rule not in ROW_RULES:
        raise ValueError(f"unknown row rule {rule!r}; available: {', '.join(ROW_RULES)}")
    return rule


def step_means(elements: torch.Tensor) -> torch.Tensor:
    """(B, L, F) -> (B, F): each window's mean over its steps.

    Summed step by step in float32 and then divided by L, an order numpy repeats
    exactly (tasks.scoring), so the torch and ONNX paths agree to the bit.
    """
    total = elements[:, 0].clone()
    for step in range(1, elements.shape[1]):
        total += elements[:, step]
    return total / elements.shape[1]


def feature_totals(means: torch.Tensor) -> torch.Tensor:
    """(B, F) -> (B,): summed feature by feature, the order numpy repeats (max_window's key)."""
    total = means[:, 0].clone()
    for feature in range(1, means.shape[1]):
        total += means[:, feature]
    return total


@torch.no_grad()
def row_contributions(
    model: WindowModel | ElementScorer, windows: WindowSet, batch_size: int = 2048,
    rule: str = DEFAULT_ROW_RULE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (contributions (T, F), coverage (T,)); uncovered rows have NaN contributions.

    `model` is a torch family or any callable mapping (B, L, F) windows to element
    scores (e.g. tasks.scoring.OnnxScorer), so ONNX Runtime can do the scoring.
    """
    check_rule(rule)
    if isinstance(model, torch.nn.Module):
        model.eval()
    score = getattr(model, "element_scores", model)
    series = windows.series
    t, f = series.shape
    acc = torch.zeros(t, f, dtype=torch.float32, device=series.device)
    cover = torch.zeros(t, dtype=torch.float32, device=series.device)
    steps = torch.arange(windows.length, device=series.device)
    best = torch.full((t,), -torch.inf, dtype=torch.float32, device=series.device)
    for i in range(0, len(windows), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(windows)), device=series.device)
        elements = score(windows.batch(idx)).float().to(series.device)  # (B, L, F)
        starts = windows.starts[idx]
        if rule == "mean_elem":
            rows = (starts[:, None] + steps).reshape(-1)  # (B*L,)
            acc.index_add_(0, rows, elements.reshape(-1, f))
            cover.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float32))
            continue
        means = step_means(elements)  # (B, F)
        if rule == "last_window":
            acc.index_add_(0, starts + windows.length - 1, means)
            cover.index_add_(0, starts + windows.length - 1, torch.ones_like(starts, dtype=torch.float32))
            continue
        totals = feature_totals(means) if rule == "max_window" else None
        for step in range(windows.length - 1, -1, -1):  # numpy's order (tasks.scoring)
            rows = starts + step
            cover.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float32))
            if totals is None:  # mean_window: every step carries the window's per-feature mean
                acc.index_add_(0, rows, means)
                continue
            better = totals > best[rows]
            best[rows[better]] = totals[better]
            acc[rows[better]] = means[better]
    divisor = cover if rule in ("mean_elem", "mean_window") else (cover > 0).float()
    contributions = acc / divisor.clamp(min=1).unsqueeze(1)
    contributions[cover == 0] = float("nan")
    return contributions, cover
