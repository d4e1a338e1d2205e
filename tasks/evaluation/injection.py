"""Synthetic anomalies injected into a (T, F) array: the built-in feed's labels and selection's
extra evidence come from the same code.

Why: a labelled validation slice often holds 1-4 real events, too few to tell detectors
apart. Injected anomalies of known kinds, placed on normal stretches of the validation rows,
add labelled events that cost nothing. Five kinds, each defined relative to a per-feature
reference (`center`, `scale`: mean and standard deviation of normal rows), so the effect is
the same in raw or scaled units (every kind commutes with a per-feature affine map):

- spike: +/- 5-8 scale on 1-3 rows;
- level_shift: +/- 2.5-4 scale for a stretch;
- variance_burst: added N(0, (2.5 scale)^2) noise;
- stuck: the sensor repeats its value at the segment's first row;
- correlation_break: the sensor follows its own slow sine (center + 2 scale sin), no longer
  the drivers it shares with the other sensors.

Pure numpy: no Prefect, no store. Seeded: the same inputs and seed give the same copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

ANOMALY_KINDS = ("spike", "level_shift", "variance_burst", "stuck", "correlation_break")
ROW_KINDS = ("spike", "level_shift", "variance_burst")
"""Kinds that mean something on a single row (tables, window 1): a stuck value or a broken
correlation needs a stretch of rows to show."""


@dataclass(frozen=True)
class Injection:
    """One injected anomaly: rows [start, start + length) of the features listed."""

    kind: str
    start: int
    length: int
    features: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def apply_anomaly(x: np.ndarray, kind: str, start: int, length: int, features: Sequence[int],
                  center: np.ndarray, scale: np.ndarray, rng: np.random.Generator) -> None:
    """Change rows [start, start + length) of `features` of `x` in place (draws from `rng`)."""
    seg = slice(start, start + length)
    for s in features:
        if kind == "spike":
            x[seg, s] += rng.choice([-1, 1]) * rng.uniform(5, 8) * scale[s]
        elif kind == "level_shift":
            x[seg, s] += rng.choice([-1, 1]) * rng.uniform(2.5, 4) * scale[s]
        elif kind == "variance_burst":
            x[seg, s] += rng.normal(0, 2.5 * scale[s], length)
        elif kind == "stuck":
            x[seg, s] = x[start, s]
        elif kind == "correlation_break":  # the sensor follows an unrelated smooth signal
            t = np.arange(length)
            x[seg, s] = center[s] + 2 * scale[s] * np.sin(2 * np.pi * t / length * 3)
        else:
            raise ValueError(f"unknown anomaly kind {kind!r}; known: {', '.join(ANOMALY_KINDS)}")


def pick_features(n_features: int, rng: np.random.Generator) -> tuple[int, ...]:
    """1-3 distinct features (fewer when the series has fewer)."""
    k = int(rng.integers(1, 4))
    return tuple(int(s) for s in rng.choice(n_features, size=min(k, n_features), replace=False))


def lengths_for(window: int) -> dict[str, tuple[int, int]]:
    """Segment lengths (min, max rows) per kind, relative to the model window: a spike is a
    few rows; a shift or burst half a window to two; a stuck sensor or a broken correlation
    shows only once the other sensors have moved on, so one to three windows."""
    w = max(int(window), 1)
    if w == 1:
        return {kind: (1, 1) for kind in ANOMALY_KINDS}
    return {"spike": (1, 3), "level_shift": (max(2, w // 2), 2 * w),
            "variance_burst": (max(2, w // 2), 2 * w), "stuck": (w, 3 * w),
            "correlation_break": (w, 3 * w)}


@dataclass(frozen=True)
class Injected:
    """The changed copy, its labels (1 on injected rows), event ids (-1: none) and the list."""

    x: np.ndarray
    labels: np.ndarray
    events: np.ndarray
    injections: list[Injection]


def _free_starts(free: np.ndarray, length: int, margin: int) -> np.ndarray:
    """Starts s such that rows [s - margin, s + length + margin) are all free."""
    span = length + 2 * margin
    padded = np.concatenate(([False] * margin, free, [False] * margin))
    csum = np.concatenate(([0], np.cumsum(padded, dtype=np.int64)))
    if padded.size < span:
        return np.empty(0, dtype=np.int64)
    full = (csum[span:] - csum[:-span]) == span  # window of padded rows starting at i
    return np.flatnonzero(full)  # padded start i is original start i (margin rows before it)


def inject(x: np.ndarray, eligible: np.ndarray, *, window: int, count: int, seed: int,
           kinds: Sequence[str] = ANOMALY_KINDS, max_share: float = 0.1,
           reference: np.ndarray | None = None) -> Injected:
    """A copy of `x` (T, F) with up to `count` anomalies on `eligible` rows, kinds in turn.

    Every injected segment, plus `window` rows on each side, lies on eligible rows, so no
    window covers both an injected row and a non-eligible one (a real anomaly, another
    entity, rows that must stay untouched); segments never overlap, and injected rows stay
    under `max_share` of the eligible rows. Placement, lengths and effects draw from one
    generator seeded by `seed`. `reference` (normal rows, default the eligible ones) gives
    each feature's center and scale.
    """
    x = np.array(x, dtype=np.float64, copy=True)
    eligible = np.asarray(eligible, dtype=bool)
    if x.ndim != 2 or eligible.shape != (x.shape[0],):
        raise ValueError(f"inject needs x (T, F) and eligible (T,), got {x.shape}, {eligible.shape}")
    unknown = sorted(set(kinds) - set(ANOMALY_KINDS))
    if unknown:
        raise ValueError(f"unknown anomaly kinds {unknown}; known: {', '.join(ANOMALY_KINDS)}")
    ref = x[eligible] if reference is None else np.asarray(reference, dtype=np.float64)
    center = ref.mean(axis=0) if len(ref) else np.zeros(x.shape[1])
    scale = ref.std(axis=0) if len(ref) else np.ones(x.shape[1])
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    rng = np.random.default_rng(seed)
    lengths = lengths_for(window)
    margin = max(int(window), 1)
    budget = int(max_share * eligible.sum())
    free = eligible.copy()
    labels = np.zeros(len(x), dtype=np.int8)
    events = np.full(len(x), -1, dtype=np.int32)
    done: list[Injection] = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        lo, hi = lengths[kind]
        length = int(rng.integers(lo, hi + 1))
        if labels.sum() + length > budget:
            continue
        starts = _free_starts(free, length, margin)
        if starts.size == 0:
            continue
        start = int(rng.choice(starts))
        features = pick_features(x.shape[1], rng)
        apply_anomaly(x, kind, start, length, features, center, scale, rng)
        labels[start:start + length] = 1
        events[start:start + length] = len(done)
        free[start:start + length] = False
        done.append(Injection(kind, start, length, features))
    return Injected(x, labels, events, done)
