"""Nightly operation: ingest the night's batch, score it, check drift, alert, publish.

    ingest night (+ a link per quarantined batch) -> score with the champion
    -> drift report (+ event) -> alerts -> UI artifacts (summary with plot, segments, links)

Rerunning a night replaces its partitions (scores, drift report, alert log) and
sends no alert twice; a night without input is reported as "missing".
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from prefect import flow

from flows.common import resolve_config
from schemas.config import DatasetConfig
from tasks.common import run_logger
from tasks.data.ingest import IngestReport, ingest_night, ingest_source
from tasks.data.report import publish_ingestion
from tasks.nightly.alert import alert_night
from tasks.nightly.drift import check_drift
from tasks.nightly.report import BackfillProgress, NightResult, publish_night
from tasks.nightly.score import score_day


def run_night(cfg: DatasetConfig, day: date, config: str | None,
              ingestion: IngestReport) -> NightResult:
    """Everything after ingestion for one night (shared by nightly and backfill)."""
    scored = score_day(cfg, day)
    night = NightResult(cfg.name, day.isoformat(), ingestion, scored)
    if scored.status == "scored":
        night = replace(night, drift=check_drift(cfg, day, scored, config),
                        alerts=alert_night(cfg, day, scored))
    else:
        run_logger(__name__).warning("%s: no input for the night of %s (reported, not failed)",
                                     cfg.name, day)
    return replace(night, artifacts=publish_night(cfg, night))


@flow(name="nightowl-nightly", log_prints=True)
def nightly_flow(config: str | None = None, day: date | None = None) -> dict[str, Any]:
    """Score one night (yesterday by default). Rerunning a night replaces its partition."""
    cfg = resolve_config(config)
    day = day or date.today() - timedelta(days=1)
    ingestion = ingest_night(cfg, day)
    publish_ingestion(cfg, ingestion)
    return run_night(cfg, day, config, ingestion).to_json()


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
    publish_ingestion(cfg, ingestion)
    days = [start + timedelta(days=i) for i in range((end - start).days)]
    progress = BackfillProgress(cfg, days)
    nights = []
    for d in days:
        night = run_night(cfg, d, config, ingestion)
        progress.night_done(night)
        nights.append(night.scoring.to_json() | {"night": d.isoformat()})
    return nights
