"""Calibration stage: thresholds, validation metrics and the drift reference of one candidate.

Reads only the candidate's row scores (written once by training), never the
model or the scaled data: every threshold method is computed and reported,
the configured one is applied (tasks.evaluation.thresholds), the labelled
validation slice is measured with the one metric set (tasks.evaluation.metrics),
and the drift reference joins the dataset's feature quantiles with this
model's train-score quantiles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig, ThresholdConfig
from tasks.common import run_logger, store_for
from tasks.data.prepare import PreparedData
from tasks.evaluation.drift_statistics import score_reference
from tasks.evaluation.metrics import evaluate
from tasks.evaluation.thresholds import calibrate
from tasks.training.train import ROW_SCORES, TrainedCandidate
from tasks.versions import DRIFT_REFERENCE, THRESHOLD

CALIBRATION = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """The applied threshold and the candidate's metrics on the labelled validation slice."""

    family: str
    method: str
    threshold: float
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def split_scores(rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normal train scores, validation scores, validation labels) of a row-scores frame."""
    split, labels = rows["split"].to_numpy(), rows["label"].to_numpy().astype(np.int8)
    scores = rows["score"].to_numpy()
    train = (split == "train") & (labels == 0)
    val = split == "validation"
    return scores[train], scores[val], labels[val]


def entity_calibration(rows: pl.DataFrame, cfg: ThresholdConfig) -> dict[str, Any]:
    """Per entity (of a model over several), its own calibration when it has at least
    `min_entity_rows` normal validation rows; which entities keep the pooled one, and why."""
    entities = rows["entity"].unique(maintain_order=True).to_list()
    if not cfg.per_entity or len(entities) < 2:
        return {}
    own: dict[str, Any] = {}
    pooled: dict[str, str] = {}
    for entity in entities:
        train, val, labels = split_scores(rows.filter(pl.col("entity") == entity))
        normal = int((np.isfinite(val) & (labels == 0)).sum())
        if normal < cfg.min_entity_rows:
            pooled[entity] = f"{normal} normal validation rows < {cfg.min_entity_rows}"
            continue
        try:
            t = calibrate(train, val, labels, cfg)
        except ValueError as err:
            pooled[entity] = str(err)
            continue
        own[entity] = {"threshold": t["threshold"], "method": t["method"],
                       "n_validation_normal": normal, "normaliser": t["normaliser"],
                       "fpr": t["methods"][t["method"]]["fpr"]}
    return {"per_entity": own, "pooled_entities": pooled, "min_entity_rows": cfg.min_entity_rows}


@task(name="calibrate", cache_policy=NO_CACHE)
def calibrate_candidate(cfg: DatasetConfig, prepared: PreparedData,
                        trained: TrainedCandidate) -> Calibration:
    """Every threshold method on the candidate's row scores; the configured one applied."""
    store = store_for(cfg)
    rows = pl.from_arrow(store.read_parquet(trained.file(ROW_SCORES)))
    train, val, labels = split_scores(rows)
    threshold = calibrate(train, val, labels, cfg.threshold)
    threshold |= entity_calibration(rows, cfg.threshold)
    threshold["feature_scale"] = trained.feature_scale
    ok = np.isfinite(val)
    metrics = evaluate(labels[ok], val[ok], threshold["threshold"], cfg.window.length)
    reference = {**store.read_json(prepared.reference_key), "scores": score_reference(train)}
    store.write_json(trained.file(THRESHOLD), threshold)
    store.write_json(trained.file(DRIFT_REFERENCE), reference)
    result = Calibration(trained.family, threshold["method"], float(threshold["threshold"]), metrics)
    store.write_json(trained.file(CALIBRATION), result.to_json())
    if threshold.get("per_entity") or threshold.get("pooled_entities"):
        run_logger(__name__).info("%s: %d entities calibrated on their own rows, %d pooled",
                                  trained.family, len(threshold["per_entity"]),
                                  len(threshold["pooled_entities"]))
    run_logger(__name__).info(
        "%s: validation ROC-AUC %.3f PR-AUC %.3f F1 %.3f at %s threshold %.4g", trained.family,
        metrics["roc_auc"], metrics["pr_auc"], metrics["f1"], result.method, result.threshold)
    return result
