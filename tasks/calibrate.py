"""Threshold calibration: every method computed and reported, the configured one applied.

A model never makes the binary call; this module does, from scores on train rows
(normal by construction) and on labelled validation rows. Prediction rule
everywhere: anomalous when score > threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy import stats
from sklearn.metrics import precision_recall_curve, roc_curve

from schemas.config import DatasetConfig, FamilyConfig, ThresholdConfig
from tasks.common import compute_device, run_logger, store_for
from tasks.export import onnx_version_files
from tasks.metrics import evaluate
from tasks.model_io import model_from_bytes
from tasks.normalise import normaliser_json, p_values  # noqa: F401 - p_values re-exported
from tasks.prepare import PreparedData, load_prepared
from tasks.score import feature_error_scale, score_rows


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


# -- Prefect stage -------------------------------------------------------------------------


def validation_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, window: int | None = None
) -> dict[str, float]:
    """The full metric set of tasks.metrics (one definition everywhere) plus the FPR."""
    return {**evaluate(labels, scores, threshold, window),
            "fpr": rates(scores, labels, threshold)["fpr"]}


def validation_scores_key(candidate: str) -> str:
    """Where calibration leaves the validation rows' scores for the report stage."""
    return f"{candidate}/validation_scores.parquet"


@task(name="calibrate", cache_policy=NO_CACHE)
def calibrate_candidate(
    cfg: DatasetConfig, family: FamilyConfig, prepared: PreparedData, candidate: str
) -> dict[str, Any]:
    """Score train and validation rows, calibrate every threshold method, measure quality."""
    store = store_for(cfg)
    fit_info = store.read_json(f"{candidate}/fit.json")
    model = model_from_bytes(fit_info["arguments"], store.read_bytes(f"{candidate}/weights.safetensors"),
                             compute_device(cfg))
    scaled, _, _ = load_prepared(cfg, prepared)
    split = scaled["split"].to_numpy()
    labels = scaled["label"].to_numpy().astype(np.int8)
    train = (split == "train") & (labels == 0)
    val = split == "validation"
    _, raw = score_rows(model, scaled, cfg.columns.features, cfg.window.length)
    feature_scale = feature_error_scale(raw[train])
    scores = (raw / feature_scale.astype(np.float32)).sum(axis=1)
    threshold = calibrate(scores[train], scores[val], labels[val], cfg.threshold)
    threshold["feature_scale"] = feature_scale.tolist()
    ok = val & np.isfinite(scores)
    metrics = validation_metrics(labels[ok], scores[ok], threshold["threshold"], cfg.window.length)
    store.write_parquet(validation_scores_key(candidate), scaled.filter(pl.Series(val)).select(
        "timestamp", "entity", "label").with_columns(pl.Series("score", scores[val])).to_arrow())
    run_logger(__name__).info(
        "%s: validation ROC-AUC %.3f PR-AUC %.3f F1 %.3f at %s threshold %.4g", family.name,
        metrics["roc_auc"], metrics["pr_auc"], metrics["f1"], threshold["method"],
        threshold["threshold"],
    )
    return {"threshold": threshold, "metrics": metrics, "fit": fit_info,
            "extra_files": onnx_version_files(model)}  # model.onnx joins the version
