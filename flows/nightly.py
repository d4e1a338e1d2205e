"""Nightly operation: ingest the night's batch, score it, check drift, alert, publish.

    ingest night -> score with the champion -> drift report (+ event) -> alerts -> UI artifacts

Rerunning a night replaces its partitions (scores, drift report, alert log) and
sends no alert twice; a night without input is reported as "missing".
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from prefect import flow

from flows.common import resolve_config
from schemas.config import DatasetConfig
from tasks.alert import alert_night
from tasks.common import run_logger
from tasks.drift import check_drift
from tasks.ingest import ingest_source
from tasks.night_report import publish_night
from tasks.nightly import champion_reference, ingest_night, night_inputs
from tasks.score import score_day


def run_night(cfg: DatasetConfig, day: date, config: str | None,
              ingestion: dict[str, Any]) -> dict[str, Any]:
    """Everything after ingestion for one night (shared by nightly and backfill)."""
    scoring = score_day(cfg, day)
    night: dict[str, Any] = {"dataset": cfg.name, "date": day.isoformat(), "ingestion": ingestion,
                             "scoring": scoring, "drift": None, "alerts": None}
    if scoring["status"] == "scored":
        scores, scaled = night_inputs(cfg, day, scoring["key"])
        reference = champion_reference(cfg)
        night["drift"] = check_drift(cfg, day, reference, scaled, scores["score"].to_numpy(),
                                     scores["is_anomaly"].to_numpy(), config)
        night["alerts"] = alert_night(cfg, day, scores)
    else:
        run_logger(__name__).warning("%s: no input for the night of %s (reported, not failed)",
                                     cfg.name, day)
    night["artifacts"] = publish_night(cfg, _summary(night))
    return night


def _summary(night: dict[str, Any]) -> dict[str, Any]:
    """The night without per-feature statistics (artifacts and run results stay small)."""
    drift = night["drift"]
    if drift:
        drift = {k: v for k, v in drift.items() if k != "features"}
    return {**night, "drift": drift}


@flow(name="nightowl-nightly", log_prints=True)
def nightly_flow(config: str | None = None, day: date | None = None) -> dict[str, Any]:
    """Score one night (yesterday by default). Rerunning a night replaces its partition."""
    cfg = resolve_config(config)
    day = day or date.today() - timedelta(days=1)
    return _summary(run_night(cfg, day, config, ingest_night(cfg, day)))


@flow(name="nightowl-backfill", log_prints=True)
def backfill_flow(config: str | None = None, start: date | None = None,
                  end: date | None = None) -> list[dict[str, Any]]:
    """Score every night in [start, end); defaults to the config's score range."""
    cfg = resolve_config(config)
    if start is None or end is None:
        if cfg.splits.score is None:
            raise ValueError("backfill needs start and end, or splits.score in the config")
        start = start or cfg.splits.score.start.date()
        end = end or cfg.splits.score.end.date()
    ingestion = ingest_source(cfg)
    days = [start + timedelta(days=i) for i in range((end - start).days)]
    return [_summary(run_night(cfg, d, config, ingestion))["scoring"] | {"night": d.isoformat()}
            for d in days]
