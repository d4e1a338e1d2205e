"""Choosing a champion from few labels: real and injected evidence, and a fallback (pure).

Why: a validation slice often holds 1-4 labelled events, and the family that ranks first
on them is often not the best on the next rows (11 dev series: choosing the best family on
validation PR-AUC reached 0.335 score-split PR-AUC where a fixed robust-z ensemble reached
0.311 and the best family in hindsight more). So two kinds of evidence are combined, and a
candidate replaces the ensemble only when the evidence separates them.

The rule ("evidence"):

1. Per candidate and slice, PR-AUC (average precision) as a gain over chance,
   g = (AP - pi) / (1 - pi), pi the slice's share of positive rows: 0 for a random
   score, 1 for a perfect one, so slices of different prevalence are comparable.
   Slices: the real labelled validation rows, and the injected copy (tasks.evaluation
   .injection: synthetic anomalies on normal validation stretches; rows really labelled
   anomalous are left out of it).
2. combined = (n_real * g_real + w * n_inj * g_inj) / (n_real + w * n_inj), with n the
   number of labelled events of each slice and w = `injected_weight` (an injected event
   is weaker evidence than a real one: it shows general sensitivity, not this data's
   anomalies). A slice without events drops out.
3. With less evidence than `min_events` (n_real + w * n_inj) nothing is told apart: the
   fallback is chosen. Otherwise the candidate with the highest combined value is the
   top. If it is not the fallback
   (the ensemble), its events are resampled with replacement (real and injected events
   separately, normal rows fixed; `bootstrap` resamples, seeded): the top is chosen only
   if its combined value beats the fallback's in at least `confidence` of them; otherwise
   the fallback is chosen ("the margin is inside the noise").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

MAX_CELLS = 4_000_000
"""Largest (resamples x rows) weight matrix built at once: bounds the bootstrap's memory."""
RULE = ("combined = (n_real*g_real + w*n_inj*g_inj) / (n_real + w*n_inj), g = (PR-AUC - "
        "positive share) / (1 - positive share); the top candidate replaces the fallback only "
        "if it beats it in >= confidence of event bootstraps, and only with evidence "
        "n_real + w*n_inj >= min_events")


@dataclass(frozen=True)
class LabelledSlice:
    """Every candidate's scores on one labelled slice: labels, event id per row (-1 normal)."""

    name: str
    labels: np.ndarray
    events: np.ndarray
    scores: Mapping[str, np.ndarray]

    @property
    def n_events(self) -> int:
        return int(self.events.max()) + 1 if self.events.size and self.events.max() >= 0 else 0


@dataclass(frozen=True)
class SelectionSettings:
    injected_weight: float = 0.25
    bootstrap: int = 200
    confidence: float = 0.9
    seed: int = 0
    fallback: str = "ensemble"
    min_events: float = 3.0


def event_ids(labels: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Each run of positive rows (within one group, e.g. entity) gets an id 0, 1, ...; -1 else."""
    y = np.asarray(labels).astype(bool)
    before = np.concatenate(([False], y[:-1]))
    if groups is not None:
        g = np.asarray(groups)
        before &= np.concatenate(([False], g[1:] == g[:-1]))
    ids = np.cumsum(y & ~before) - 1
    return np.where(y, ids, -1).astype(np.int64)


def _sorted_ties(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order by descending score, index in that order of the last row of each tie group)."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    last = np.flatnonzero(np.concatenate((s[1:] != s[:-1], [True])))
    return order, last


def average_precision(labels: np.ndarray, scores: np.ndarray,
                      weights: np.ndarray | None = None) -> np.ndarray | float:
    """Average precision with row weights (B, n) or (n,): sum over distinct thresholds of
    (R_k - R_{k-1}) P_k, as scikit-learn's average_precision_score with sample_weight."""
    y = np.asarray(labels).astype(np.float64)
    order, last = _sorted_ties(np.asarray(scores, dtype=np.float64))
    single = weights is None or np.ndim(weights) == 1
    w = np.ones((1, y.size)) if weights is None else np.atleast_2d(weights).astype(np.float64)
    w, ys = w[:, order], y[order]
    tp = np.cumsum(w * ys, axis=1)[:, last]
    fp = np.cumsum(w * (1 - ys), axis=1)[:, last]
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / total
    ap = (np.diff(recall, axis=1, prepend=0.0) * precision).sum(axis=1)
    ap = np.where(total[:, 0] > 0, ap, np.nan)
    return float(ap[0]) if single else ap


def gain(ap: np.ndarray | float, prevalence: np.ndarray | float) -> np.ndarray | float:
    """PR-AUC as a gain over a random score: (AP - pi) / (1 - pi)."""
    return (ap - prevalence) / (1 - prevalence)


def combined(real: np.ndarray | float, n_real: int, injected: np.ndarray | float, n_inj: int,
             weight: float) -> np.ndarray | float:
    """Event-weighted mean of the two gains (a slice without events drops out)."""
    w_real, w_inj = float(n_real), weight * n_inj
    if w_real + w_inj == 0:
        return np.nan
    parts = (w_real * real if n_real else 0.0) + (w_inj * injected if n_inj else 0.0)
    return parts / (w_real + w_inj)


def _point(slice_: LabelledSlice, name: str) -> tuple[float, float]:
    """(AP, gain) of one candidate on a slice; NaN without events."""
    if slice_.n_events == 0:
        return np.nan, np.nan
    ap = average_precision(slice_.labels, slice_.scores[name])
    return ap, float(gain(ap, float(np.mean(slice_.labels))))


def _resampled_weights(slice_: LabelledSlice, counts: np.ndarray) -> np.ndarray:
    """(B, n) row weights: normal rows 1, an event's rows the times it was drawn."""
    pos = slice_.events >= 0
    w = np.ones((counts.shape[0], slice_.labels.size))
    w[:, pos] = counts[:, slice_.events[pos]]
    return w


def _boot_gains(slice_: LabelledSlice, names: list[str], counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per candidate, its gain on each resample of the slice's events (chunked over B)."""
    out = {n: np.empty(counts.shape[0]) for n in names}
    step = max(1, MAX_CELLS // max(slice_.labels.size, 1))
    for i in range(0, counts.shape[0], step):
        w = _resampled_weights(slice_, counts[i:i + step])
        prevalence = (w * slice_.labels).sum(axis=1) / w.sum(axis=1)
        for n in names:
            out[n][i:i + step] = gain(average_precision(slice_.labels, slice_.scores[n], w),
                                      prevalence)
    return out


def p_beats(top: str, other: str, real: LabelledSlice, injected: LabelledSlice | None,
            settings: SelectionSettings) -> float:
    """Share of event bootstraps in which `top`'s combined value beats `other`'s."""
    rng = np.random.default_rng(settings.seed)
    b = settings.bootstrap
    values = {}
    parts = []
    for s in (real, injected):
        n = 0 if s is None else s.n_events
        counts = rng.multinomial(n, np.full(n, 1 / n), size=b) if n else None
        parts.append((n, _boot_gains(s, [top, other], counts) if n else None))
    (n_r, g_r), (n_i, g_i) = parts
    for name in (top, other):
        values[name] = combined(g_r[name] if n_r else 0.0, n_r, g_i[name] if n_i else 0.0, n_i,
                                settings.injected_weight)
    return float(np.mean(values[top] > values[other]))


def select(real: LabelledSlice, injected: LabelledSlice | None,
           settings: SelectionSettings = SelectionSettings()) -> dict[str, object]:
    """The evidence rule (module docstring): what is chosen, and every number behind it."""
    names = list(real.scores)
    table: dict[str, dict[str, float]] = {}
    n_r, n_i = real.n_events, 0 if injected is None else injected.n_events
    for name in names:
        ap_r, g_r = _point(real, name)
        ap_i, g_i = _point(injected, name) if injected is not None else (np.nan, np.nan)
        table[name] = {"real_pr_auc": ap_r, "real_gain": g_r, "injected_pr_auc": ap_i,
                       "injected_gain": g_i,
                       "combined": float(combined(g_r, n_r, g_i, n_i, settings.injected_weight))}
    decision: dict[str, object] = {
        "rule": "evidence", "statement": RULE, "real_events": n_r, "injected_events": n_i,
        "injected_weight": settings.injected_weight, "bootstrap": settings.bootstrap,
        "confidence": settings.confidence, "seed": settings.seed, "candidates": table,
        "fallback_candidate": settings.fallback if settings.fallback in table else None}
    ranked = [n for n in names if table[n]["combined"] == table[n]["combined"]]
    has_fallback = settings.fallback in table
    if not ranked:
        if not has_fallback:
            raise ValueError("no labelled events, real or injected: the evidence rule cannot "
                             "choose, and there is no ensemble to fall back on")
        return {**decision, "top": None, "chosen": settings.fallback, "fallback": True,
                "why": "no labelled events, real or injected"}
    top = max(ranked, key=lambda n: table[n]["combined"])
    decision["top"] = top
    evidence = n_r + settings.injected_weight * n_i
    decision["evidence_events"] = evidence
    if has_fallback and top != settings.fallback and evidence < settings.min_events:
        return {**decision, "chosen": settings.fallback, "fallback": True,
                "why": f"{evidence:g} weighted events < {settings.min_events:g}: too few to "
                       f"separate candidates (a bootstrap of so few events shows no noise)"}
    if not has_fallback:
        return {**decision, "chosen": top, "fallback": False,
                "why": f"highest combined value; no {settings.fallback} to fall back on"}
    if top == settings.fallback:
        return {**decision, "chosen": top, "fallback": False,
                "why": f"the {settings.fallback} has the highest combined value"}
    p = p_beats(top, settings.fallback, real, injected, settings)
    decision["p_top_beats_fallback"] = p
    if p >= settings.confidence:
        return {**decision, "chosen": top, "fallback": False,
                "why": f"{top} beats the {settings.fallback} in {p:.0%} of {settings.bootstrap} "
                       f"event bootstraps (>= {settings.confidence:.0%})"}
    return {**decision, "chosen": settings.fallback, "fallback": True,
            "why": f"{top} beats the {settings.fallback} in only {p:.0%} of "
                   f"{settings.bootstrap} event bootstraps (< {settings.confidence:.0%}): "
                   f"the margin is inside the noise"}
