"""Concept-drift statistics (pure): is tonight's data still the data the champion was trained on?

Per feature: the KS statistic and the population stability index (PSI) of the
night's scaled rows against a reference kept inside each model version
(`drift_reference.json`: quantiles and bin fractions of the scaled train rows,
and quantiles of the train-score distribution). Plus the shift of the score
distribution and the anomaly rate. Why quantiles, not the rows: the reference
must be small, immutable and JSON, and 101 quantiles give the KS statistic to
within 1% of the exact one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from schemas.config import DriftConfig

QUANTILES = np.linspace(0.0, 1.0, 101)
EPS = 1e-4


# -- the reference -------------------------------------------------------------------------
def feature_reference(values: np.ndarray, bins: int) -> dict[str, list[float]]:
    """Quantiles (for KS) and interior quantile bin edges with their fractions (for PSI)."""
    values = values[np.isfinite(values)]
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    return {
        "quantiles": np.quantile(values, QUANTILES).tolist(),
        "edges": edges.tolist(),
        "fractions": bin_fractions(values, edges).tolist(),
    }


def data_reference(train: pl.DataFrame, features: list[str], bins: int) -> dict[str, Any]:
    """The per-feature part of a reference: the same for every family trained on `train`."""
    return {
        "rows": train.height,
        "features": {f: feature_reference(train[f].to_numpy().astype(np.float64), bins)
                     for f in features},
    }


def score_reference(train_scores: np.ndarray) -> dict[str, list[float]]:
    """Quantiles of a model's scores on its normal training rows."""
    scores = train_scores[np.isfinite(train_scores)]
    return {"quantiles": np.quantile(scores, QUANTILES).tolist() if len(scores) else []}


# -- statistics ------------------------------------------------------------------------------
def bin_fractions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fraction of values in each of the len(edges)+1 bins the edges cut the line into."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def ks_against_quantiles(quantiles: list[float], values: np.ndarray) -> float:
    """sup |F_ref - F_new|, F_ref interpolated from the reference quantiles."""
    q = np.asarray(quantiles, dtype=np.float64)
    new = np.sort(values[np.isfinite(values)])
    if len(q) == 0 or len(new) == 0:
        return float("nan")
    points = np.concatenate([q, new])
    f_ref = np.interp(points, q, np.linspace(0.0, 1.0, len(q)), left=0.0, right=1.0)
    # Both one-sided limits of the empirical CDF at its jumps.
    f_new_hi = np.searchsorted(new, points, side="right") / len(new)
    f_new_lo = np.searchsorted(new, points, side="left") / len(new)
    return float(max(np.max(np.abs(f_ref - f_new_hi)), np.max(np.abs(f_ref - f_new_lo))))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index; empty bins get a small floor so it stays finite."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_drift(reference: dict[str, Any], values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    edges = np.asarray(reference["edges"], dtype=np.float64)
    return {
        "ks": ks_against_quantiles(reference["quantiles"], values),
        "psi": psi(np.asarray(reference["fractions"]), bin_fractions(values, edges)),
    }


def drift_report(
    reference: dict[str, Any], night: pl.DataFrame, features: list[str], cfg: DriftConfig,
    scores: np.ndarray | None = None, is_anomaly: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every statistic, the thresholds they were judged by, and the verdict with its reasons."""
    per_feature = {f: feature_drift(reference["features"][f], night[f].to_numpy().astype(np.float64))
                   for f in features}
    drifted = sorted(f for f, s in per_feature.items()
                     if s["ks"] > cfg.ks_threshold or s["psi"] > cfg.psi_threshold)
    score_ks = (ks_against_quantiles(reference["scores"]["quantiles"], scores)
                if scores is not None else float("nan"))
    rate = float(np.mean(is_anomaly)) if is_anomaly is not None and len(is_anomaly) else 0.0
    reasons = []
    if len(drifted) >= cfg.min_drifted_features:
        reasons.append(f"{len(drifted)} feature(s) drifted: {drifted[:10]}")
    if score_ks == score_ks and score_ks > cfg.score_ks_threshold:
        reasons.append(f"score distribution KS {score_ks:.3f} > {cfg.score_ks_threshold}")
    if rate > cfg.max_anomaly_rate:
        reasons.append(f"anomaly rate {rate:.3f} > {cfg.max_anomaly_rate}")
    return {
        "drift": bool(reasons),
        "reasons": reasons,
        "rows": night.height,
        "drifted_features": drifted,
        "features": per_feature,
        "score_ks": score_ks,
        "anomaly_rate": rate,
        "thresholds": cfg.model_dump(),
    }
