"""Rows in, scores out: the one scoring path shared by training, evaluation and nightly runs.

Row rule (models/scoring.py): windows of stride 1 over each entity; a row's
contribution from a feature follows the version's row rule (models/scoring.py:
"mean_window", the default, is the mean over every window containing the row of that
window's per-feature mean over its steps; "mean_elem", "last_window", "max_window"),
divided by that feature's mean contribution on normal training rows
(`feature_scale`); the row score is the sum of its contributions, so the
explanation adds up to the score. The rule is a version's (`LoadedModel.row_rule`):
its feature scale and threshold were fitted under it. The scorer is a torch family or
its verified ONNX graph on ONNX Runtime (same call, same numbers within the export
tolerance).

Why two implementations of the row rule: a torch family scores where its series
lives (the GPU during training) through models.scoring.row_contributions, while an
ONNX graph is scored by `numpy_row_contributions`, the same rule and the same
float32 summation order in numpy, so a scoring worker needs no torch at all (the
`scoring` install). torch is imported only on the torch path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import polars as pl

from schemas.config import ROW_RULES, RowRule, WindowConfig
from tasks.data.window import window_starts
from tasks.evaluation.ensemble import row_combiner

if TYPE_CHECKING:  # the torch path imports these when it runs; the ONNX path never does
    import torch

    from models.base import WindowModel
    from tasks.versions import LoadedModel

CONTRIB_PREFIX = "contrib__"
"""Column prefix of per-feature contributions in the scores layer (`contrib__<feature>`)."""
DEFAULT_ROW_RULE: RowRule = WindowConfig().row_rule


class OnnxScorer:
    """Element scores from an ONNX graph on ONNX Runtime's CPU provider.

    numpy windows in, numpy element scores out. Given a torch tensor it answers with
    a tensor on the input's device, so `models.scoring.row_contributions` also
    accepts it in place of a torch model.
    """

    def __init__(self, onnx_bytes: bytes, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default
        self.session = ort.InferenceSession(onnx_bytes, sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, windows: np.ndarray) -> np.ndarray:
        """(B, L, F) windows -> (B, L, F) float32 element scores."""
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(windows, np.float32)})
        return out

    def element_scores(self, x: Any) -> Any:
        """`run` for numpy input; a torch tensor in gives a tensor back, on its device."""
        if isinstance(x, np.ndarray):
            return self.run(x)
        import torch  # only a caller that already holds a tensor gets here

        return torch.from_numpy(self.run(x.detach().cpu().float().numpy())).to(x.device)

    __call__ = element_scores


@dataclass(frozen=True)
class EnsembleMember:
    """What scores one member of an ensemble, its feature scale and its weight."""

    scorer: WindowModel | OnnxScorer
    feature_scale: list[float] | None
    weight: float
    rule: RowRule


@dataclass(frozen=True)
class EnsembleScorer:
    """An ensemble's members, each scored by its own torch model or ONNX graph; the rows
    combine in numpy (tasks.evaluation.ensemble), so either path gives the same rule."""

    members: list[EnsembleMember]
    combine: Callable[[Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]
    """members' contributions -> (scores, contributions): the version's own combiner."""


def scorer_of(loaded: LoadedModel) -> WindowModel | EnsembleScorer | None:
    """What `score_rows` takes for a version loaded with torch: its model, or its members'."""
    if not loaded.is_ensemble:
        return loaded.model
    return EnsembleScorer([EnsembleMember(m.model, m.feature_scale, w, m.row_rule)
                           for m, w in loaded.members], row_combiner(loaded.config["ensemble"]))


def step_means(elements: np.ndarray) -> np.ndarray:
    """(B, L, F) -> (B, F) float32: each window's mean over its steps, summed step by step
    and divided by L like models.scoring.step_means (bit-identical results)."""
    total = elements[:, 0].astype(np.float32, copy=True)
    for step in range(1, elements.shape[1]):
        total += elements[:, step]
    return total / np.float32(elements.shape[1])


def feature_totals(means: np.ndarray) -> np.ndarray:
    """(B, F) -> (B,) float32, summed feature by feature like models.scoring.feature_totals."""
    total = means[:, 0].copy()
    for feature in range(1, means.shape[1]):
        total += means[:, feature]
    return total


def numpy_row_contributions(
    score: Callable[[np.ndarray], np.ndarray], series: np.ndarray, starts: np.ndarray,
    length: int, batch_size: int = 2048, rule: RowRule = DEFAULT_ROW_RULE,
) -> tuple[np.ndarray, np.ndarray]:
    """(contributions (T, F), coverage (T,)) of windows at `starts` over a (T, F) series;
    `score` maps (B, L, F) windows to element scores (e.g. `OnnxScorer.run`).

    The rules and the numbers of models.scoring.row_contributions without torch: each
    row's float32 sum runs over its windows in the same order (earliest start first,
    batch by batch), so the two agree to the bit on the same element scores.
    """
    if rule not in ROW_RULES:
        raise ValueError(f"unknown row rule {rule!r}; available: {', '.join(ROW_RULES)}")
    series = np.ascontiguousarray(series, dtype=np.float32)
    t, f = series.shape
    acc = np.zeros((t, f), dtype=np.float32)
    cover = np.zeros(t, dtype=np.float32)
    if len(starts) == 0:
        return np.full((t, f), np.nan, np.float32), cover
    steps = np.arange(length)
    best = np.full(t, -np.inf, dtype=np.float32)
    for i in range(0, len(starts), batch_size):
        batch = starts[i : i + batch_size]
        elements = score(series[batch[:, None] + steps])  # (B, L, F), one gather
        if rule == "last_window":  # one window ends at each row
            acc[batch + length - 1] += step_means(elements)
            cover[batch + length - 1] += 1
            continue
        means = None if rule == "mean_elem" else step_means(elements)  # (B, F)
        totals = feature_totals(means) if rule == "max_window" else None
        # Step L-1 first: a row's windows then arrive earliest start first, as in torch's
        # index_add_. Consecutive starts (the usual batch, inside one entity) add slices;
        # otherwise distinct starts make each fancy-indexed += touch a row once.
        first = int(batch[0])
        consecutive = int(batch[-1]) - first == len(batch) - 1
        for step in range(length - 1, -1, -1):
            rows = slice(first + step, first + step + len(batch)) if consecutive else batch + step
            cover[rows] += 1
            if totals is not None:  # max_window: keep the covering window with the largest total
                better = totals > best[rows]
                at = (batch + step)[better]
                best[at] = totals[better]
                acc[at] = means[better]
            else:
                acc[rows] += elements[:, step] if means is None else means
    divisor = cover if rule in ("mean_elem", "mean_window") else (cover > 0).astype(np.float32)
    contributions = acc / np.maximum(divisor, 1)[:, None]
    contributions[cover == 0] = np.nan
    return contributions, cover


def series_tensor(scaled: pl.DataFrame, features: list[str], device: torch.device) -> torch.Tensor:
    """The whole scaled series as one (T, F) float32 tensor on the device."""
    import torch

    return torch.from_numpy(series_array(scaled, features)).to(device)


def series_array(scaled: pl.DataFrame, features: list[str]) -> np.ndarray:
    """The whole scaled series as one (T, F) float32 array."""
    return np.ascontiguousarray(scaled.select(features).to_numpy().astype("float32"))


def raw_contributions(
    scorer: WindowModel | OnnxScorer, scaled: pl.DataFrame, features: list[str], length: int,
    batch_size: int = 2048, *, rule: RowRule,
) -> np.ndarray:
    """(T, F) contribution per row and feature under the row `rule`, before per-feature
    normalisation. `rule` has no default on purpose: it must be the version's own.

    `scaled` is sorted by entity, timestamp; rows no full window covers are NaN.
    """
    starts = window_starts(scaled["entity"].rle_id().to_numpy(), length, 1)
    if isinstance(scorer, OnnxScorer):
        return numpy_row_contributions(scorer.run, series_array(scaled, features), starts, length,
                                       batch_size, rule)[0]
    import torch

    from models.engine import WindowSet
    from models.scoring import row_contributions

    series = series_tensor(scaled, features, scorer.device)
    contrib, _ = row_contributions(scorer, WindowSet(series, torch.from_numpy(starts), length),
                                   batch_size, rule)
    return contrib.cpu().numpy()


def normalised(raw: np.ndarray, feature_scale: np.ndarray | list[float] | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(scores (T,), contributions (T, F)) from raw contributions and a feature scale."""
    contrib = raw if feature_scale is None else raw / np.asarray(feature_scale, dtype=np.float32)
    return contrib.sum(axis=1), contrib


def score_rows(
    scorer: WindowModel | OnnxScorer | EnsembleScorer, scaled: pl.DataFrame, features: list[str],
    length: int, feature_scale: np.ndarray | list[float] | None = None, batch_size: int = 2048, *,
    rule: RowRule,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (T,), contributions (T, F)) for a frame sorted by entity, timestamp, under
    the row `rule` (a version's `LoadedModel.row_rule`; no default, so no caller can
    silently score a version under another rule than the one it was calibrated with).

    With `feature_scale` (each feature's mean contribution on normal training rows),
    contributions are in units of that feature's typical training error, so a
    feature that is always hard to reconstruct cannot drown out the others. An ensemble
    scores each member with its own feature scale and combines the contributions with
    the members' weights (`feature_scale` is then unused: the ensemble has none).
    """
    if isinstance(scorer, EnsembleScorer):  # each member under its own version's rule
        parts = [normalised(raw_contributions(m.scorer, scaled, features, length, batch_size,
                                              rule=m.rule), m.feature_scale)[1]
                 for m in scorer.members]
        return scorer.combine(parts)
    raw = raw_contributions(scorer, scaled, features, length, batch_size, rule=rule)
    return normalised(raw, feature_scale)


def feature_error_scale(contributions: np.ndarray) -> np.ndarray:
    """Mean contribution per feature over (normal training) rows, floored to stay positive."""
    scale = np.nanmean(contributions, axis=0).astype(np.float64)
    floor = max(float(np.nanmean(scale)) * 1e-3, 1e-12)
    return np.maximum(np.nan_to_num(scale, nan=floor), floor)
