"""Batched scoring: element scores of windows mapped back to rows.

Rule: a row's contribution from feature f is the mean, over every scored window
that contains the row, of that window's element score at the row's step and
feature f. A row's score is the sum of its feature contributions, so the
per-feature explanation adds up to the score exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.base import WindowModel
from models.engine import WindowSet

ElementScorer = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def row_contributions(
    model: WindowModel | ElementScorer, windows: WindowSet, batch_size: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (contributions (T, F), coverage (T,)); uncovered rows have NaN contributions.

    `model` is a torch family or any callable mapping (B, L, F) windows to element
    scores (e.g. tasks.scoring.OnnxScorer), so ONNX Runtime can do the scoring.
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    score = getattr(model, "element_scores", model)
    series = windows.series
    t, f = series.shape
    acc = torch.zeros(t, f, dtype=torch.float32, device=series.device)
    cover = torch.zeros(t, dtype=torch.float32, device=series.device)
    steps = torch.arange(windows.length, device=series.device)
    for i in range(0, len(windows), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(windows)), device=series.device)
        elements = score(windows.batch(idx)).float().to(series.device)  # (B, L, F)
        rows = (windows.starts[idx, None] + steps).reshape(-1)  # (B*L,)
        acc.index_add_(0, rows, elements.reshape(-1, f))
        cover.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float32))
    contributions = acc / cover.clamp(min=1).unsqueeze(1)
    contributions[cover == 0] = float("nan")
    return contributions, cover
