"""Score normalisation: a raw score as an empirical p-value against normal validation scores.

Why: raw scores of two model versions (or two families) live on different
scales, so "score 3.2" means nothing across a retrain. The p-value
p(s) = (1 + #{ref >= s}) / (n + 1) is the share of normal validation rows at
least as abnormal as s: comparable across versions, ~uniform on normal rows,
and consistent with the conformal threshold (score > t  =>  p <= alpha).
Pure numpy, no I/O: calibration builds the reference, scoring applies it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_REFERENCE = 1000
"""Largest stored reference: threshold.json stays small (~20 kB) whatever the slice size."""


def reference_scores(normal_scores: np.ndarray, max_size: int = MAX_REFERENCE) -> np.ndarray:
    """Sorted finite normal scores; above `max_size` rows, `max_size` evenly spaced quantiles.

    With quantiles, p-values keep their meaning (share of normal rows at least
    as high) at a resolution of 1/max_size.
    """
    ref = np.sort(np.asarray(normal_scores, dtype=np.float64))
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        raise ValueError("a p-value reference needs at least one finite normal score")
    if ref.size > max_size:
        ref = np.quantile(ref, np.linspace(0.0, 1.0, max_size), method="linear")
    return ref


def p_values(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """p = (1 + #{ref >= s}) / (n + 1) per score; NaN scores give NaN. `reference` must be sorted."""
    ref = np.asarray(reference, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    at_least = ref.size - np.searchsorted(ref, s, side="left")
    p = (1.0 + at_least) / (ref.size + 1.0)
    return np.where(np.isnan(s), np.nan, p)


def normaliser_json(normal_scores: np.ndarray, max_size: int = MAX_REFERENCE) -> dict[str, Any]:
    """What threshold.json stores so scoring can turn scores into p-values."""
    ref = reference_scores(normal_scores, max_size)
    return {
        "kind": "empirical_p_value",
        "source": "validation rows labelled normal",
        "n_normal": int(np.isfinite(np.asarray(normal_scores, dtype=np.float64)).sum()),
        "reference": ref.tolist(),
    }


def p_values_from_threshold(scores: np.ndarray, threshold: dict[str, Any]) -> np.ndarray:
    """p-values with a version's threshold.json; all NaN for versions calibrated before p-values."""
    normaliser = threshold.get("normaliser")
    if not normaliser:
        return np.full(np.shape(scores), np.nan)
    return p_values(scores, np.asarray(normaliser["reference"], dtype=np.float64))


def entity_threshold(threshold: dict[str, Any], entity: str) -> dict[str, Any]:
    """An entity's own calibration (threshold, p-value reference) where it has one, else the
    pooled one: entities with too few normal validation rows share the pooled threshold."""
    return threshold.get("per_entity", {}).get(entity, threshold)


def thresholds_by_entity(scores: np.ndarray, entities: np.ndarray, threshold: dict[str, Any]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(threshold, p-value) per row, each row judged by its entity's calibration."""
    scores = np.asarray(scores, dtype=np.float64)
    entities = np.asarray(entities)
    limits = np.full(scores.shape, float(threshold["threshold"]))
    p = p_values_from_threshold(scores, threshold)
    for entity in threshold.get("per_entity", {}):
        rows = entities == entity
        if rows.any():
            own = threshold["per_entity"][entity]
            limits[rows] = float(own["threshold"])
            p[rows] = p_values_from_threshold(scores[rows], own)
    return limits, p
