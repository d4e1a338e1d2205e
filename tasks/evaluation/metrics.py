"""Anomaly-detection metrics: point-wise, segment-aware, range-based and interpretation.

Why a module of its own: calibration, champion selection and reports must all
agree on one definition of every number, and time-series anomaly metrics are
notoriously easy to get subtly different (point adjustment inflates F1, VUS
depends on buffer conventions). Everything here is pure numpy/scikit-learn:
no Prefect, no I/O, and no Python loop over rows (loops run over thresholds,
buffer lengths or label segments only, all bounded).

Conventions shared by every function:

- ``labels``: 1-D 0/1 array, one entry per row (1 = anomalous);
- ``scores``: 1-D float array, higher = more abnormal;
- a prediction at ``threshold`` is ``scores > threshold`` (strict);
- a *segment* is a maximal run of consecutive 1s in ``labels``;
- metrics that need positive labels return NaN when there are none (ROC-AUC
  also when there are no negatives); they never raise on degenerate labels.
  A precision of 0/0 (nothing predicted) is 0.0, scikit-learn's
  ``zero_division=0`` convention, so that F1 is 0 rather than NaN.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

log = logging.getLogger(__name__)

NAN = float("nan")
DEFAULT_VUS_BUFFER = 100
METRIC_KEYS = (
    "roc_auc",
    "pr_auc",
    "precision",
    "recall",
    "f1",
    "best_f1",
    "best_f1_threshold",
    "pa_f1",
    "pa_k_auc",
    "event_recall",
    "vus_pr",
    "fpr",
)


# -- input checks and shared helpers ----------------------------------------------------


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated copies: labels as int8 0/1, scores as finite float64 of the same length."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"labels ({y.shape[0]} rows) and scores ({s.shape[0]} rows) differ in length"
        )
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must contain only 0 and 1")
    if not np.isfinite(s).all():
        raise ValueError(f"scores contain {int((~np.isfinite(s)).sum())} non-finite values")
    return y.astype(np.int8), s


def segments(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and exclusive end row of every run of 1s in ``labels`` (vectorised)."""
    y = np.asarray(labels).astype(bool).astype(np.int8)
    edges = np.diff(np.concatenate(([0], y, [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _prf(tp: np.ndarray | float, fp: np.ndarray | float, n_pos: int) -> tuple:
    """Precision, recall, F1 from counts; works element-wise on arrays of thresholds."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    if n_pos == 0:
        predicted = tp + fp
        precision = np.where(predicted > 0, 0.0, np.nan)
        nan = np.full_like(tp, np.nan)
        return precision, nan, nan
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = tp / n_pos
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def _segment_hits(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per segment: its length and how many of its rows are predicted anomalous."""
    starts, ends = segments(y)
    cum = np.concatenate(([0], np.cumsum(pred, dtype=np.int64)))
    return ends - starts, cum[ends] - cum[starts]


# -- threshold-free ranking metrics -----------------------------------------------------


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN unless both classes are present."""
    y, s = _check(labels, scores)
    if y.all() or not y.any():
        return NAN
    return float(roc_auc_score(y, s))


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (step-wise PR-AUC, no interpolation); NaN without positives."""
    y, s = _check(labels, scores)
    if not y.any():
        return NAN
    return float(average_precision_score(y, s))


# -- threshold metrics ------------------------------------------------------------------


def precision_recall_f1(
    labels: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[float, float, float]:
    """Point-wise precision, recall and F1 of ``scores > threshold``."""
    y, s = _check(labels, scores)
    pred = s > threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    p, r, f = _prf(tp, fp, int(y.sum()))
    return float(p), float(r), float(f)


def false_positive_rate(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Share of normal rows with ``scores > threshold``; 0.0 when there are no normal rows."""
    y, s = _check(labels, scores)
    normal = y == 0
    return float((s[normal] > threshold).mean()) if normal.any() else 0.0


def best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The highest point-wise F1 over all thresholds, and a threshold that attains it.

    scikit-learn's curve predicts ``score >= t``; the returned threshold is moved
    to the midpoint between ``t`` and the next lower distinct score, so that
    ``precision_recall_f1(labels, scores, threshold)`` (strict ``>``) reproduces
    the F1 exactly and the threshold does not sit on a training score.
    """
    y, s = _check(labels, scores)
    if not y.any():
        return NAN, NAN
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    t = float(thresholds[best])
    distinct = np.unique(s)
    below = distinct[distinct < t]
    if below.size == 0:
        strict = t - max(abs(t), 1.0) * 1e-6  # below every score: predict all rows
    else:
        lower = float(below[-1])
        mid = lower + (t - lower) / 2
        strict = mid if lower < mid < t else lower
    return float(f1[best]), strict


def point_adjust(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Point-adjusted predictions: a segment with any predicted row becomes fully predicted."""
    y = np.asarray(labels).astype(np.int8)
    p = np.asarray(pred).astype(bool)
    starts, ends = segments(y)
    cum = np.concatenate(([0], np.cumsum(p, dtype=np.int64)))
    hit = (cum[ends] - cum[starts]) > 0
    marks = np.zeros(y.size + 1, dtype=np.int64)
    np.add.at(marks, starts[hit], 1)
    np.add.at(marks, ends[hit], -1)
    return p | (np.cumsum(marks[:-1]) > 0)


def pa_f1(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """F1 after point adjustment (Xu et al. 2018); optimistic, kept for comparability."""
    y, s = _check(labels, scores)
    adjusted = point_adjust(y, s > threshold)
    tp = int((adjusted & (y == 1)).sum())
    fp = int((adjusted & (y == 0)).sum())
    return float(_prf(tp, fp, int(y.sum()))[2])


@dataclass(frozen=True)
class PAKCurve:
    """F1 under PA%K for each K, and the area under F1-vs-K normalised to [0, 1]."""

    k: np.ndarray
    f1: np.ndarray
    auc: float


def pa_k(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    ks: Sequence[float] | np.ndarray | None = None,
) -> PAKCurve:
    """PA%K (Kim et al., AAAI 2022): adjust a segment only if MORE than K% of it is detected.

    With the strict "more than", K=0 is exactly point adjustment (any hit) and
    K=100 never adjusts, i.e. plain point-wise F1. Adjustment only turns label-1
    rows positive, so false positives do not depend on K and each K costs one
    vectorised pass over segments. AUC: trapezoid over K/100 in [0, 1], divided
    by the span of K so it stays in [0, 1] for any K grid.
    """
    y, s = _check(labels, scores)
    k = np.arange(101, dtype=np.float64) if ks is None else np.asarray(ks, dtype=np.float64)
    if k.ndim != 1 or k.size == 0 or (k < 0).any() or (k > 100).any():
        raise ValueError("ks must be a non-empty 1-D sequence of percentages in [0, 100]")
    n_pos = int(y.sum())
    if n_pos == 0:
        return PAKCurve(k, np.full(k.size, np.nan), NAN)
    pred = s > threshold
    fp = int((pred & (y == 0)).sum())
    length, hits = _segment_hits(y, pred)
    ratio = hits / length
    adjusted = ratio[None, :] > (k[:, None] / 100.0)  # (n_k, n_segments)
    tp = np.where(adjusted, length[None, :], hits[None, :]).sum(axis=1)
    f1 = _prf(tp, np.full(k.size, fp), n_pos)[2]
    if k.size == 1:
        auc = float(f1[0])
    else:
        order = np.argsort(k)
        auc = float(np.trapezoid(f1[order], k[order]) / (k[order][-1] - k[order][0]))
    return PAKCurve(k, f1, auc)


def event_recall(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Fraction of true segments with at least one predicted row (event-wise recall)."""
    y, s = _check(labels, scores)
    if not y.any():
        return NAN
    _, hits = _segment_hits(y, s > threshold)
    return float((hits > 0).mean())


# -- VUS-PR -----------------------------------------------------------------------------


def _range_maxima(s: np.ndarray, starts: np.ndarray, ends_incl: np.ndarray) -> np.ndarray:
    """max(s[a..b]) for sorted, disjoint, inclusive ranges [a, b] (one reduceat call)."""
    idx = np.column_stack([starts, ends_incl + 1]).ravel()
    if idx[-1] >= s.size:
        idx = idx[:-1]  # the last range runs to the end of the array
    return np.maximum.reduceat(s, idx)[::2]


def _count_at_least(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many values are >= each threshold (values sorted ascending)."""
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side="left")


def vus_pr(
    labels: np.ndarray,
    scores: np.ndarray,
    max_buffer: int = DEFAULT_VUS_BUFFER,
    n_thresholds: int | None = 250,
) -> float:
    """VUS-PR (Paparrizos et al., VLDB 2022), as TSB-AD's ``RangeAUC_volume_opt`` computes it.

    For every buffer length l = 0..L (``max_buffer``), with h = l // 2:

    1. Soft labels. Each segment [s, e] (inclusive) is extended on both sides:
       a row at distance d = 1..h after e or before s gets weight
       ``w = sqrt(1 - d / l)``; overlapping contributions add and are capped at
       1; labelled rows keep 1. Extended ranges [s-h, e+h] (clipped to the
       series) that overlap are merged (TSB-AD's ``new_sequence``): M ranges.
    2. Thresholds: the descending sorted scores at positions
       ``linspace(0, n-1, n_thresholds).astype(int)`` (``None``: every distinct
       score); prediction at t is ``score >= t`` (TSB-AD's convention).
    3. At each t, with P labelled rows, hit = labelled rows predicted and
       B = sum of buffer weights of predicted buffer rows:
       TP = hit + B, P_new = P + B/2 (the mean of P and the soft label mass
       P + B), recall = min(TP / P_new, 1), existence = share of the M ranges
       holding a prediction, R = recall * existence, precision = TP / #predicted.
    4. AP_l = sum_j (R_j - R_{j-1}) * precision_j with R_0 = 0 (step rule, no
       interpolation), and VUS-PR = mean of AP_l over l = 0..L.

    Perfect binary score (score = labels): the first threshold predicts exactly
    the labelled rows, so R_1 = 1 and precision_1 = 1, hence AP_l = 1 for every l.

    Constant score c: every threshold equals c and predicts all n rows, so
    TP = P + B_l, recall = min((P + B_l) / (P + B_l/2), 1) = 1, existence = 1,
    R_j = 1 for all j and AP_l = precision = (P + B_l) / n, where B_l is the
    capped buffer mass. For K segments whose buffers stay inside the series and
    do not touch each other, B_l = 2K * sum_{d=1}^{floor(l/2)} sqrt(1 - d/l),
    so VUS-PR = (P + (2K / (L+1)) * sum_{l=0}^{L} sum_{d=1}^{floor(l/2)} sqrt(1 - d/l)) / n
    (l = 0 and l = 1 contribute no buffer). See ``constant_score_vus_pr``.

    Loops run over buffer lengths only; per l the work is vectorised over buffer
    rows and ranges, and thresholds are handled by sorted searches, so the cost
    is O(L * (K*L + M) log) instead of TSB-AD's O(L * n_thresholds * n).
    """
    y, s = _check(labels, scores)
    n = y.size
    n_pos = int(y.sum())
    if n_pos == 0:
        return NAN
    if max_buffer < 0:
        raise ValueError(f"max_buffer must be >= 0, got {max_buffer}")
    starts, ends = segments(y)
    last = ends - 1
    desc = np.sort(s)[::-1]
    if n_thresholds is None:
        thresholds = np.unique(s)[::-1]
    else:
        if n_thresholds < 1:
            raise ValueError(f"n_thresholds must be >= 1, got {n_thresholds}")
        thresholds = desc[np.linspace(0, n - 1, n_thresholds).astype(int)]
    n_pred = _count_at_least(np.sort(s), thresholds).astype(np.float64)
    hit = _count_at_least(np.sort(s[y == 1]), thresholds).astype(np.float64)
    n_seg = starts.size

    aps = np.empty(max_buffer + 1)
    for length in range(max_buffer + 1):
        h = length // 2
        buffer_mass = np.zeros_like(n_pred)
        if h > 0:
            d = np.arange(1, h + 1)
            w = np.sqrt(1.0 - d / length)
            rows = np.concatenate([(last[:, None] + d).ravel(), (starts[:, None] - d).ravel()])
            weights = np.tile(w, 2 * n_seg)
            inside = (rows >= 0) & (rows < n)
            rows, weights = rows[inside], weights[inside]
            uniq, inverse = np.unique(rows, return_inverse=True)
            mass = np.minimum(np.bincount(inverse, weights=weights), 1.0)
            unlabelled = y[uniq] == 0
            uniq, mass = uniq[unlabelled], mass[unlabelled]
            if uniq.size:
                order = np.argsort(s[uniq], kind="stable")
                buffer_scores = s[uniq][order]
                cum = np.concatenate(([0.0], np.cumsum(mass[order])))
                buffer_mass = cum[-1] - cum[np.searchsorted(buffer_scores, thresholds, side="left")]
        # merged extended ranges (TSB-AD keeps ranges apart only when e_k + h < s_{k+1} - h)
        apart = (last[:-1] + h) < (starts[1:] - h)
        first_of = np.concatenate(([True], apart))
        last_of = np.concatenate((apart, [True]))
        range_start = np.maximum(starts[first_of] - h, 0)
        range_end = np.minimum(last[last_of] + h, n - 1)
        maxima = np.sort(_range_maxima(s, range_start, range_end))
        existence = _count_at_least(maxima, thresholds) / maxima.size
        tp = hit + buffer_mass
        recall = np.minimum(tp / (n_pos + buffer_mass / 2.0), 1.0)
        r = recall * existence
        precision = tp / n_pred
        aps[length] = float(np.dot(np.diff(np.concatenate(([0.0], r))), precision))
    return float(aps.mean())


def constant_score_vus_pr(n_rows: int, n_positive: int, n_segments: int, max_buffer: int) -> float:
    """The closed form of VUS-PR for a constant score (isolated segments away from the edges)."""
    total = 0.0
    for length in range(2, max_buffer + 1):
        d = np.arange(1, length // 2 + 1)
        total += float(np.sqrt(1.0 - d / length).sum())
    return (n_positive + 2 * n_segments * total / (max_buffer + 1)) / n_rows


# -- interpretation: HitRate@P% ---------------------------------------------------------


@dataclass(frozen=True)
class InterpretationSegment:
    """Rows [start, end) and the 0-based feature indices named as the anomaly's cause."""

    start: int
    end: int
    dims: frozenset[int]


_INTERPRETATION_LINE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*:\s*(\d+(?:\s*,\s*\d+)*)\s*,?\s*$")


def parse_interpretation_labels(
    lines: Iterable[str],
    *,
    source: str = "<interpretation_label>",
    n_rows: int | None = None,
    n_dims: int | None = None,
) -> list[InterpretationSegment]:
    """Parse SMD ``interpretation_label`` lines ``start-end:d1,d2,...``.

    Rows are 0-based with an exclusive end; dimensions in the file are 1-based
    and are returned 0-based (column indices of the feature matrix). Blank
    lines are skipped; anything else malformed raises ValueError naming
    ``source`` and the 1-based line number.
    """
    out: list[InterpretationSegment] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        match = _INTERPRETATION_LINE.match(line)
        if match is None:
            raise ValueError(
                f"{source}: line {number}: expected 'start-end:d1,d2,...', got {line[:80]!r}"
            )
        start, end = int(match.group(1)), int(match.group(2))
        dims = [int(t) for t in match.group(3).split(",") if t.strip()]
        if end <= start:
            raise ValueError(f"{source}: line {number}: empty row range {start}-{end}")
        if n_rows is not None and end > n_rows:
            raise ValueError(
                f"{source}: line {number}: row range {start}-{end} exceeds {n_rows} rows"
            )
        if min(dims) < 1 or (n_dims is not None and max(dims) > n_dims):
            raise ValueError(
                f"{source}: line {number}: dimensions must lie in 1..{n_dims or 'n'}, got {dims}"
            )
        out.append(InterpretationSegment(start, end, frozenset(d - 1 for d in dims)))
    return out


def interpretation_mask(
    segments_: Sequence[InterpretationSegment], n_rows: int, n_dims: int, offset: int = 0
) -> np.ndarray:
    """Boolean (n_rows, n_dims) mask of ground-truth cause dimensions; overlapping segments unite.

    ``offset`` shifts segment rows (e.g. the number of train rows before SMD's test file).
    """
    mask = np.zeros((n_rows, n_dims), dtype=bool)
    for seg in segments_:
        a, b = seg.start + offset, seg.end + offset
        if a < 0 or b > n_rows or (seg.dims and max(seg.dims) >= n_dims):
            raise ValueError(f"interpretation segment {seg} does not fit ({n_rows}, {n_dims})")
        mask[a:b, sorted(seg.dims)] = True
    return mask


def interpretation_row_sets(
    segments_: Sequence[InterpretationSegment], n_rows: int
) -> list[frozenset[int]]:
    """Per-row sets of 0-based cause dimensions (empty for rows no segment covers).

    Built per constant piece between segment boundaries, not per row: rows of a
    piece share one frozenset object.
    """
    empty: frozenset[int] = frozenset()
    rows: list[frozenset[int]] = [empty] * n_rows
    bounds = {min(s.start, n_rows) for s in segments_} | {min(s.end, n_rows) for s in segments_}
    cuts = sorted(bounds | {0, n_rows})
    for a, b in pairwise(cuts):
        dims = frozenset().union(*(s.dims for s in segments_ if s.start <= a and b <= s.end))
        if dims:
            rows[a:b] = [dims] * (b - a)
    return rows


def _truth_mask(
    truth: np.ndarray | Sequence[AbstractSet[int]], shape: tuple[int, int]
) -> np.ndarray:
    if isinstance(truth, np.ndarray) and truth.dtype == bool:
        if truth.shape != shape:
            raise ValueError(f"truth mask shape {truth.shape} != contributions shape {shape}")
        return truth
    if len(truth) != shape[0]:
        raise ValueError(f"truth has {len(truth)} rows, contributions {shape[0]}")
    mask = np.zeros(shape, dtype=bool)
    # convenience path for per-row sets: rows without causes cost nothing
    rows = [i for i, dims in enumerate(truth) if dims]
    for i in rows:
        mask[i, sorted(truth[i])] = True
    return mask


def hit_rate(
    labels: np.ndarray,
    contributions: np.ndarray,
    truth: np.ndarray | Sequence[AbstractSet[int]],
    p: float = 100.0,
) -> float:
    """HitRate@P% (Su et al., OmniAnomaly, KDD 2019), averaged over anomalous rows.

    For each row with label 1 and a non-empty ground-truth set G (0-based
    feature indices; a bool mask or per-row sets), take the ``floor(P% * |G|)``
    features with the largest contribution (ties: lower index first) and score
    ``|top ∩ G| / |G|``. Rows without G are skipped; NaN if none remain.
    """
    y = np.asarray(labels)
    c = np.asarray(contributions, dtype=np.float64)
    if c.ndim != 2 or y.ndim != 1 or c.shape[0] != y.shape[0]:
        raise ValueError(
            f"contributions must be (n, d) with n = len(labels); got {c.shape}, {y.shape}"
        )
    if p <= 0:
        raise ValueError(f"p must be positive, got {p}")
    mask = _truth_mask(truth, c.shape)
    rows = (y == 1) & mask.any(axis=1)
    if not rows.any():
        return NAN
    c, g = c[rows], mask[rows]
    size = g.sum(axis=1)
    k = np.minimum(np.floor(p * size / 100.0 + 1e-9).astype(np.int64), c.shape[1])
    order = np.argsort(-c, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(c.shape[1])[None, :].repeat(c.shape[0], 0), axis=1)
    hits = ((rank < k[:, None]) & g).sum(axis=1)
    return float((hits / size).mean())


# -- everything at once -----------------------------------------------------------------


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    window: int | None = None,
) -> dict[str, float]:
    """Every metric above under stable keys (``METRIC_KEYS``); NaN where undefined.

    VUS-PR uses L = 2 * window (TSB-AD's choice) when a window length is known,
    else ``DEFAULT_VUS_BUFFER``.
    """
    y, s = _check(labels, scores)
    precision, recall, f1 = precision_recall_f1(y, s, threshold)
    best, best_threshold = best_f1(y, s)
    buffer = DEFAULT_VUS_BUFFER if window is None else 2 * int(window)
    out = {
        "roc_auc": roc_auc(y, s),
        "pr_auc": pr_auc(y, s),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "best_f1": best,
        "best_f1_threshold": best_threshold,
        "pa_f1": pa_f1(y, s, threshold),
        "pa_k_auc": pa_k(y, s, threshold).auc,
        "event_recall": event_recall(y, s, threshold),
        "vus_pr": vus_pr(y, s, max_buffer=buffer),
        "fpr": false_positive_rate(y, s, threshold),
    }
    return {key: float(out[key]) for key in METRIC_KEYS}
