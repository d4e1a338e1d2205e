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
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from models.engine import pick_device
from tasks.common import run_logger, store_for
from tasks.export import onnx_version_files
from tasks.model_io import model_from_bytes
from tasks.prepare import PreparedData, load_prepared
from tasks.score import score_rows
from schemas.config import DatasetConfig, FamilyConfig, ThresholdConfig


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
    }
    methods = {
        name: {"threshold": t, **rates(val_scores, val_labels, t)}
        for name, t in candidates.items()
    }
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
    }


# -- Prefect stage -------------------------------------------------------------------------


def validation_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Threshold-free ranking quality plus the rates at the applied threshold."""
    both = labels.min() != labels.max()
    return {
        "roc_auc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "pr_auc": float(average_precision_score(labels, scores)) if both else float("nan"),
        **rates(scores, labels, threshold),
    }


@task(name="calibrate", cache_policy=NO_CACHE)
def calibrate_candidate(
    cfg: DatasetConfig, family: FamilyConfig, prepared: PreparedData, candidate: str
) -> dict[str, Any]:
    """Score train and validation rows, calibrate every threshold method, measure quality."""
    store = store_for(cfg)
    fit_info = store.read_json(f"{candidate}/fit.json")
    model = model_from_bytes(fit_info["arguments"], store.read_bytes(f"{candidate}/weights.safetensors"),
                             pick_device(cfg.training.device))
    scaled, _, _ = load_prepared(cfg, prepared)
    scores, _ = score_rows(model, scaled, cfg.columns.features, cfg.window.length)
    split = scaled["split"].to_numpy()
    labels = scaled["label"].to_numpy().astype(np.int8)
    train = (split == "train") & (labels == 0)
    val = split == "validation"
    threshold = calibrate(scores[train], scores[val], labels[val], cfg.threshold)
    ok = val & np.isfinite(scores)
    metrics = validation_metrics(labels[ok], scores[ok], threshold["threshold"])
    run_logger(__name__).info(
        "%s: validation ROC-AUC %.3f PR-AUC %.3f F1 %.3f at %s threshold %.4g", family.name,
        metrics["roc_auc"], metrics["pr_auc"], metrics["f1"], threshold["method"],
        threshold["threshold"],
    )
    return {"threshold": threshold, "metrics": metrics, "fit": fit_info,
            "extra_files": onnx_version_files(model)}  # model.onnx joins the version
