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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
    min_margin: float = 0.0
    normal_block: int = 100


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


def _resampled_weights(slice_: LabelledSlice, counts: np.ndarray,
                       normal_counts: np.ndarray | None = None, block: int = 0) -> np.ndarray:
    """(B, n) row weights: an event's rows the times it was drawn; normal rows 1, or with
    `normal_counts` the times their block of `block` consecutive normal rows was drawn."""
    pos = slice_.events >= 0
    w = np.ones((counts.shape[0], slice_.labels.size))
    w[:, pos] = counts[:, slice_.events[pos]]
    if normal_counts is not None:
        w[:, ~pos] = normal_counts[:, normal_blocks(slice_, block)]
    return w


def normal_blocks(slice_: LabelledSlice, block: int) -> np.ndarray:
    """Block id of each normal row: consecutive normal rows, `block` at a time (neighbouring
    rows share windows, so they are resampled together)."""
    return np.arange(int((slice_.events < 0).sum())) // block


def _boot_gains(slice_: LabelledSlice, names: list[str], counts: np.ndarray,
                normal_counts: np.ndarray | None = None, block: int = 0) -> dict[str, np.ndarray]:
    """Per candidate, its gain on each resample of the slice's events (and, with
    `normal_counts`, of its blocks of normal rows); chunked over B."""
    out = {n: np.empty(counts.shape[0]) for n in names}
    step = max(1, MAX_CELLS // max(slice_.labels.size, 1))
    for i in range(0, counts.shape[0], step):
        nc = None if normal_counts is None else normal_counts[i:i + step]
        w = _resampled_weights(slice_, counts[i:i + step], nc, block)
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


# --- The prior rule: keep a champion learned from wider evidence unless this scope's events
# say otherwise. One test at every level: the shipped prior per kind of data (the benchmark
# corpus' validation numbers), then the fleet's pooled events, then the scope's own events.

PRIOR_RULE = ("keep the prior champion unless the candidate with the best validation gain "
              "((PR-AUC - positive share) / (1 - positive share), event-weighted mean over the "
              "slices) beats it in >= 1 - (1 - confidence) / (candidates - 1) of bootstraps "
              "(events, and blocks of normal rows, resampled), on >= min_events labelled events "
              "and by >= min_margin")


@dataclass(frozen=True)
class Prior:
    """Who is champion before this evidence is seen: a ranking (the first one present among
    the candidates is the prior), where it came from, and the numbers behind it."""

    ranking: tuple[str, ...]
    source: str
    provenance: dict[str, object] = field(default_factory=dict)

    def pick(self, available: Sequence[str]) -> str | None:
        """The first ranked family present; None when none of them is."""
        return next((name for name in self.ranking if name in available), None)


def validation_slice(splits: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                     scores: Mapping[str, np.ndarray], name: str = "validation") -> LabelledSlice:
    """The rows a choice may see: validation rows with a finite score from every candidate.
    Score-split rows never reach a choice, whatever the caller hands in."""
    keep = np.asarray(splits) == "validation"
    for s in scores.values():
        keep &= np.isfinite(np.asarray(s, dtype=np.float64))
    y = np.asarray(labels).astype(np.int8)[keep]
    return LabelledSlice(name, y, event_ids(y, np.asarray(groups)[keep]),
                         {k: np.asarray(v, dtype=np.float64)[keep] for k, v in scores.items()})


def pooled_gains(slices: Sequence[LabelledSlice], names: Sequence[str],
                 counts: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
                 block: int = 0) -> dict[str, np.ndarray]:
    """Per candidate, the event-weighted mean gain over slices (each slice's own scores, so
    models of different scopes never share a scale); with `counts` per slice ((B, events),
    (B, normal blocks)) one value per resample, else the point value (shape (1,))."""
    total = {n: 0.0 for n in names}
    weight = 0
    for i, s in enumerate(slices):
        if s.n_events == 0:
            continue
        c = None if counts is None else counts[i]
        if c is None:
            prevalence = float(np.mean(s.labels))
            gains = {n: np.atleast_1d(gain(average_precision(s.labels, s.scores[n]), prevalence))
                     for n in names}
        else:
            gains = _boot_gains(s, list(names), c[0], c[1], block)
        total = {n: total[n] + s.n_events * gains[n] for n in names}
        weight += s.n_events
    if weight == 0:
        return {n: np.array([np.nan]) for n in names}
    return {n: np.atleast_1d(total[n] / weight) for n in names}


def _draws(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """(b, n) counts: n items drawn n times with replacement, b times."""
    return rng.multinomial(n, np.full(n, 1 / n), size=b)


def p_better(challenger: str, incumbent: str, slices: Sequence[LabelledSlice],
             settings: SelectionSettings) -> float:
    """Share of bootstraps in which the challenger's pooled gain beats the incumbent's; a
    tie counts as no. Each slice's events are resampled, and its normal rows in blocks of
    `normal_block` (fixing the normal rows made a lucky draw of noise look certain)."""
    rng = np.random.default_rng(settings.seed)
    counts = []
    for s in slices:
        blocks = int(normal_blocks(s, settings.normal_block).max(initial=-1)) + 1
        counts.append((_draws(rng, s.n_events, settings.bootstrap),
                       _draws(rng, blocks, settings.bootstrap)) if s.n_events and blocks else None)
    values = pooled_gains(slices, [challenger, incumbent], counts, settings.normal_block)
    return float(np.mean(values[challenger] > values[incumbent]))


def challenge(slices: Sequence[LabelledSlice], prior: Prior,
              settings: SelectionSettings = SelectionSettings()) -> dict[str, object]:
    """The prior rule (PRIOR_RULE): what is chosen and the record an operator reads: events,
    the prior and its source, the challenger, margin, confidence and why."""
    names = [n for n in slices[0].scores if all(n in s.scores for s in slices)]
    events = sum(s.n_events for s in slices)
    point = {n: float(v[0]) for n, v in pooled_gains(slices, names).items()}
    finite = [n for n in names if np.isfinite(point[n])]
    incumbent = prior.pick(finite) or prior.pick(names)
    if incumbent is None:
        raise ValueError(f"none of the prior's families {list(prior.ranking)} is a candidate "
                         f"here (candidates: {names}); set [selection] prior to one of them")
    record: dict[str, object] = {
        "rule": "prior", "statement": PRIOR_RULE, "prior": incumbent,
        "prior_source": prior.source, "prior_provenance": prior.provenance, "events": events,
        "slices": len(slices), "bootstrap": settings.bootstrap,
        "required_confidence": settings.confidence, "min_events": settings.min_events,
        "min_margin": settings.min_margin, "seed": settings.seed,
        "candidates": {n: {"gain": point[n]} for n in names}}
    if not finite:
        return {**record, "challenger": None, "margin": None, "confidence": None,
                "chosen": incumbent, "switched": False,
                "why": "no labelled validation events: the prior is kept"}
    challenger = max(finite, key=lambda n: point[n])
    # the challenger is the best of several: each rival had its chance to look lucky
    required = 1 - (1 - settings.confidence) / max(1, len(finite) - 1)
    record["required_confidence"] = required
    margin = point[challenger] - point[incumbent] if incumbent in finite else float("inf")
    record |= {"challenger": challenger, "margin": margin}
    if challenger == incumbent:
        return {**record, "confidence": None, "chosen": incumbent, "switched": False,
                "why": f"the prior {incumbent} has the best validation gain itself"}
    if events < settings.min_events:
        return {**record, "confidence": None, "chosen": incumbent, "switched": False,
                "why": f"{events} labelled events < {settings.min_events:g}: too few to overrule "
                       f"the prior {incumbent} ({challenger} leads by {margin:.3f})"}
    p = p_better(challenger, incumbent, slices, settings)
    record["confidence"] = p
    if p >= required and margin >= settings.min_margin:
        return {**record, "chosen": challenger, "switched": True,
                "why": f"{challenger} beats the prior {incumbent} by {margin:.3f} gain in {p:.0%} "
                       f"of {settings.bootstrap} bootstraps of {events} events "
                       f"(>= {required:.1%})"}
    return {**record, "chosen": incumbent, "switched": False,
            "why": f"{challenger} leads the prior {incumbent} by {margin:.3f} gain but beats it "
                   f"in only {p:.0%} of {settings.bootstrap} bootstraps of {events} events "
                   f"(< {required:.1%}) or by less than {settings.min_margin:g}: "
                   f"inside the noise, the prior is kept"}


def pooled_prior(slices: Sequence[LabelledSlice], shipped: Prior,
                 settings: SelectionSettings = SelectionSettings()) -> Prior:
    """The fleet's prior: the shipped one, challenged with every scope's validation events
    at once (the same test); each scope then challenges this one with its own events."""
    decision = challenge(slices, shipped, settings)
    chosen = str(decision["chosen"])
    return Prior((chosen, *(n for n in shipped.ranking if n != chosen)), "fleet", {
        "scopes": len(slices), "events": decision["events"], "from": shipped.source,
        "challenger": decision["challenger"], "margin": decision["margin"],
        "confidence": decision["confidence"], "why": decision["why"]})
