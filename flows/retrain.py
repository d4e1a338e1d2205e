"""Retraining: triggered by `nightowl.drift.detected`, trains one model scope (the dataset, or
the entity / group whose night drifted) on a rolling window and promotes the challenger only
if it beats that scope's champion on the same labelled slices."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from prefect import flow

from flows.candidates import new_run_id, train_candidates
from flows.common import resolve_config
from tasks.data.ingest import ingest_source
from tasks.data.ingest_report import publish_ingestion
from tasks.feedback.labels import training_labels
from tasks.training.promote import (
    latest_validated_day,
    promote_if_better,
    rolling_splits,
    with_splits,
)
from tasks.training.training_report import publish_retrain_artifacts


@flow(name="nightowl-retrain", log_prints=True)
def retrain_flow(config: str | None = None, as_of: date | None = None,
                 trigger: dict[str, Any] | None = None, group: str | None = None) -> dict[str, Any]:
    """Train every family of one scope on the last `retrain.train_days` (+ validation days)
    up to `as_of`; `group` names the entity / group (None or "": the dataset-level model)."""
    base = resolve_config(config).for_group(group or None)
    ingestion = ingest_source(base)
    publish_ingestion(base, ingestion)
    end = (datetime.combine(as_of, datetime.min.time()) if as_of
           else latest_validated_day(base))
    splits = rolling_splits(base, end)
    cfg = with_splits(base, splits)
    labels = training_labels(cfg)
    (run,) = train_candidates(cfg, new_run_id(), labels=labels)
    decision = promote_if_better(cfg, splits, run.candidates, trigger, run.selection,
                                 labels.for_entities(cfg.group_entities()))
    publish_retrain_artifacts(cfg, run.candidates, decision)
    return {"dataset": cfg.name, "group": cfg.group, "run_id": run.run_id,
            "ingestion": ingestion.rows_validated,
            "decision": {k: decision[k] for k in ("promoted", "reason", "key", "metric")}}
