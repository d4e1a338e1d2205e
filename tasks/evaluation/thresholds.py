"""Thresholds (pure): every method computed and reported, the configured one applied.

A model never makes the binary call; calibration does, from scores on train rows
(normal by construction) and on labelled validation rows. Prediction rule
everywhere: anomalous when score > threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import precision_recall_curve, roc_curve

from schemas.config import ThresholdConfig
from tasks.evaluation.normalise import normaliser_json


def percentile_threshold(train_scores: np.ndarray, percentile: float) -> float:
    """The chapter's default: a high percentile of errors on normal training rows."""
    return float(np.percentile(train_scores, percentile))


def mean_3sigma_threshold(train_scores: np.ndarray) -> float:
    """Mean + 3 standard deviations of training errors (assumes roughly normal errors)."""
    return float(np.mean(train_scores) + 3 * np.std(train_scores))


def max_f1_threshold(val_scores: np.ndarray, val_labels: np.ndarray) -> float:
    """The threshold that maximises F1 on the labelled validation slice."""
    if val_labels.min() == val_labels.max():
        return float("nan")
    precision, recall, thresholds = precision_recall_curve(val_labels, val_scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    # precision_recall_curve predicts score >= t; we predict score > t, so step just below.
    return float(np.nextafter(thresholds[best], -np.inf))


def conformal_fpr_threshold(normal_scores: np.ndarray, alpha: float) -> float:
    """Split-conformal quantile: P(new normal score > t) <= alpha for exchangeable scores.

    t is the ceil((n+1)(1-alpha))-th smallest normal score; with too few normal
    scores for that rank the guarantee needs t = +inf, which is returned.
    """
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64))
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    return float(scores[rank - 1]) if rank <= n else float("inf")


def youden_threshold(val_scores: np.ndarray, val_labels: np.ndarray) -> float:
    """The ROC-optimal point: maximises Youden's J = TPR - FPR on the validation slice."""
    if val_labels.min() == val_labels.max():
        return float("nan")
    fpr, tpr, thresholds = roc_curve(val_labels, val_scores, drop_intermediate=False)
    best = int(np.argmax((tpr - fpr)[1:])) + 1  # index 0 is roc_curve's +inf sentinel
    # roc_curve predicts score >= t; we predict score > t, so step just below.
    return float(np.nextafter(thresholds[best], -np.inf))


def conformal_guarantee(n: int, alpha: float) -> dict[str, Any]:
    """What split-conformal promises for n exchangeable normal scores at level alpha.

    Marginally P(new normal score > t) = (n+1-k)/(n+1) <= alpha (k = ceil((n+1)(1-alpha)),
    equality without ties). Conditionally on the calibration slice the FPR is
    Beta(n+1-k, k): its 95% range and the chance it exceeds alpha are reported too.
    """
    k = math.ceil((n + 1) * (1 - alpha))
    if k > n:
        return {"n": n, "rank": k, "expected_fpr_max": 0.0, "defined": False}
    dist = stats.beta(n + 1 - k, k)
    low, high = dist.ppf([0.025, 0.975])
    return {
        "n": n,
        "rank": k,
        "defined": True,
        "expected_fpr_max": (n + 1 - k) / (n + 1),
        "conditional_fpr_95": [float(low), float(high)],
        "p_conditional_fpr_above_target": float(dist.sf(alpha)),
    }


def bootstrap_fpr_interval(
    normal_scores: np.ndarray, threshold: float, resamples: int = 1000, seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Achieved FPR of `score > threshold` on normal rows with a seeded bootstrap interval.

    Resampling n scores with replacement and counting those above a fixed
    threshold is a Binomial(n, achieved) draw, so the resamples are drawn as
    such: identical in distribution, O(resamples) instead of O(resamples * n).
    """
    scores = np.asarray(normal_scores, dtype=np.float64)
    n = scores.size
    achieved = float(np.mean(scores > threshold)) if n else float("nan")
    if n == 0:
        return {"achieved": achieved, "low": achieved, "high": achieved, "n": 0}
    draws = np.random.default_rng(seed).binomial(n, achieved, size=resamples) / n
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"achieved": achieved, "low": float(low), "high": float(high), "level": level,
            "resamples": resamples, "seed": seed, "n": n}


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and false-positive rate of `score > threshold`."""
    pred = scores > threshold
    pos = labels == 1
    tp = float(np.sum(pred & pos))
    fp = float(np.sum(pred & ~pos))
    fn = float(np.sum(~pred & pos))
    tn = float(np.sum(~pred & ~pos))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": fpr}


def fpr_by_entity(entities: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                  thresholds: np.ndarray, target: float) -> list[dict[str, Any]]:
    """Per entity: false-positive rate on its normal rows (score > its row's threshold) and
    whether it lies within target +/- 3 binomial standard deviations for that many rows."""
    out = []
    entities = np.asarray(entities)
    for entity in dict.fromkeys(entities.tolist()):
        normal = (entities == entity) & (np.asarray(labels) == 0) & np.isfinite(scores)
        n = int(normal.sum())
        if n == 0:
            continue
        fpr = float(np.mean(scores[normal] > thresholds[normal]))
        sd = math.sqrt(target * (1 - target) / n)
        out.append({"entity": entity, "normal_rows": n, "fpr": fpr,
                    "within_3sd": bool(abs(fpr - target) <= 3 * sd)})
    return out


def calibrate(
    train_scores: np.ndarray, val_scores: np.ndarray, val_labels: np.ndarray, cfg: ThresholdConfig
) -> dict[str, Any]:
    """All thresholds with their validation rates, and the configured one as `threshold`."""
    train_scores = train_scores[np.isfinite(train_scores)]
    keep = np.isfinite(val_scores)
    val_scores, val_labels = val_scores[keep], val_labels[keep]
    if len(train_scores) == 0 or len(val_scores) == 0:
        raise ValueError("calibration needs scored train rows and scored validation rows")
    candidates = {
        "percentile": percentile_threshold(train_scores, cfg.percentile),
        "mean_3sigma": mean_3sigma_threshold(train_scores),
        "max_f1": max_f1_threshold(val_scores, val_labels),
        "target_fpr": conformal_fpr_threshold(val_scores[val_labels == 0], cfg.target_fpr),
        "youden": youden_threshold(val_scores, val_labels),
    }
    methods = {
        name: {"threshold": t, **rates(val_scores, val_labels, t)}
        for name, t in candidates.items()
    }
    normal = val_scores[val_labels == 0]
    methods["target_fpr"]["bootstrap_fpr"] = bootstrap_fpr_interval(normal, candidates["target_fpr"])
    methods["target_fpr"]["guarantee"] = conformal_guarantee(int(normal.size), cfg.target_fpr)
    applied = candidates[cfg.method]
    if not np.isfinite(applied):
        raise ValueError(
            f"threshold method {cfg.method!r} is undefined on this validation slice "
            f"(needs both labels for max_f1, enough normal rows for target_fpr={cfg.target_fpr})"
        )
    return {
        "method": cfg.method,
        "threshold": applied,
        "target_fpr": cfg.target_fpr,
        "percentile": cfg.percentile,
        "methods": methods,
        "n_train": int(len(train_scores)),
        "n_validation": int(len(val_scores)),
        "n_validation_anomalous": int(val_labels.sum()),
        "normaliser": normaliser_json(normal if normal.size else train_scores),
    }
