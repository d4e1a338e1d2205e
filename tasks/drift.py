"""Concept drift: is tonight's data still the data the champion was trained on?

Per feature: the KS statistic and the population stability index (PSI) of the
night's scaled rows against a reference kept inside each model version
(`drift_reference.json`: quantiles and bin fractions of the scaled train rows,
and quantiles of the train-score distribution). Plus the shift of the score
distribution and the anomaly rate. Why quantiles, not the rows: the reference
must be small, immutable and JSON, and 101 quantiles give the KS statistic to
within 1% of the exact one.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig, DriftConfig
from tasks.common import IO_RETRIES, compute_device, run_logger, store_for
from tasks.store import Store

log = logging.getLogger(__name__)

REFERENCE_FILE = "drift_reference.json"
EVENT = "nightowl.drift.detected"
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


def build_reference(
    train: pl.DataFrame, features: list[str], train_scores: np.ndarray, bins: int
) -> dict[str, Any]:
    """The training reference stored with a model version."""
    scores = train_scores[np.isfinite(train_scores)]
    return {
        "rows": train.height,
        "features": {f: feature_reference(train[f].to_numpy().astype(np.float64), bins)
                     for f in features},
        "scores": {"quantiles": np.quantile(scores, QUANTILES).tolist() if len(scores) else []},
    }


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


@task(name="drift-reference", cache_policy=NO_CACHE)
def training_reference(
    cfg: DatasetConfig, prepared: Any, candidate: str, threshold: dict[str, Any] | None = None
) -> dict[str, bytes]:
    """The reference file for a candidate's version (merged via evaluation['extra_files']).

    `threshold` is the calibration result: train scores are computed exactly as
    nightly scoring will compute them (same per-feature error scale, if any).
    """
    from tasks.model_io import model_from_bytes
    from tasks.prepare import load_prepared
    from tasks.score import score_rows

    store = store_for(cfg)
    fit_info = store.read_json(f"{candidate}/fit.json")
    model = model_from_bytes(fit_info["arguments"],
                             store.read_bytes(f"{candidate}/weights.safetensors"),
                             compute_device(cfg))
    scaled, _, _ = load_prepared(cfg, prepared)
    scores, _ = score_rows(model, scaled, cfg.columns.features, cfg.window.length,
                           (threshold or {}).get("feature_scale"))
    train = (scaled["split"] == "train").to_numpy() & (scaled["label"] == 0).to_numpy()
    reference = build_reference(scaled.filter(train), cfg.columns.features, scores[train],
                                cfg.drift.bins)
    return {REFERENCE_FILE: json.dumps(_finite(reference), sort_keys=True).encode()}


# -- the nightly stage ---------------------------------------------------------------------
def drift_key(cfg: DatasetConfig, day: date) -> str:
    return f"drift/{cfg.name}/date={day.isoformat()}/report.json"


def last_event_key(cfg: DatasetConfig) -> str:
    return f"drift/{cfg.name}/LAST_EVENT.json"


def in_cooldown(store: Store, cfg: DatasetConfig, now: datetime) -> bool:
    """Debounce: a drift event was already emitted within the cooldown."""
    key = last_event_key(cfg)
    if not store.exists(key):
        return False
    last = datetime.fromisoformat(store.read_json(key)["emitted_at"])
    return now - last < timedelta(hours=cfg.drift.cooldown_hours)


def emit_drift_event(cfg: DatasetConfig, day: date, report: dict[str, Any],
                     config_path: str | None) -> str | None:
    """Emit `nightowl.drift.detected` (resource = the dataset); returns the event id."""
    from prefect.events import emit_event

    event = emit_event(
        event=EVENT,
        resource={"prefect.resource.id": f"nightowl.dataset.{cfg.name}",
                  "prefect.resource.name": cfg.name},
        payload={"dataset": cfg.name, "date": day.isoformat(), "config": config_path,
                 "reasons": report["reasons"]},
    )
    return str(event.id) if event is not None else None


@task(name="drift-check", cache_policy=NO_CACHE, **IO_RETRIES)
def check_drift(
    cfg: DatasetConfig, day: date, reference: dict[str, Any] | None, night: pl.DataFrame,
    scores: np.ndarray, is_anomaly: np.ndarray, config_path: str | None = None,
) -> dict[str, Any]:
    """Write drift/<ds>/date=…/report.json; on drift emit the event unless in cooldown."""
    logger = run_logger(__name__)
    store = store_for(cfg)
    if reference is None:
        report: dict[str, Any] = {"drift": False, "reasons": [], "status": "no-reference"}
    else:
        report = drift_report(reference, night, list(reference["features"]), cfg.drift,
                              scores, is_anomaly)
        report["status"] = "checked"
    report.update(date=day.isoformat(), dataset=cfg.name, event=None)
    now = datetime.now(UTC)
    if report["drift"]:
        if in_cooldown(store, cfg, now):
            report["event"] = "suppressed (cooldown)"
        else:
            event_id = emit_drift_event(cfg, day, report, config_path)
            store.write_json(last_event_key(cfg), {"emitted_at": now.isoformat(),
                                                   "date": day.isoformat(), "event_id": event_id})
            report["event"] = event_id
        logger.warning("%s %s: drift (%s); event %s", cfg.name, day, "; ".join(report["reasons"]),
                       report["event"])
    store.write_bytes(drift_key(cfg, day), json.dumps(_finite(report), indent=2, sort_keys=True,
                                                      default=str).encode())
    return report


def _finite(obj: Any) -> Any:
    """Strict JSON (NaN becomes null) so DuckDB/jq read the report."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
