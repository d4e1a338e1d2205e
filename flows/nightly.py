"""Nightly operation: ingest the night's batches, score them, check drift, alert, publish.

    ingest night (+ a link per quarantined batch) -> plan (which model scores which entity)
      -> score shards -> commit -> per model scope: drift report (+ event) and alerts
      -> UI artifacts (summary with plot, segments, links)

Shards, drift checks and alerts run on the configured task runner (`[runner]`),
as one sub-flow per night. Rerunning a night replaces its partitions (scores,
drift reports, alert logs) and sends no alert twice; a night without input is
reported as "missing"; entities without a model are reported, never dropped.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from prefect import flow

from flows.common import resolve_config
from flows.runners import describe, task_runner
from schemas.config import ConfigRef, DatasetConfig
from tasks.common import run_logger
from tasks.data.ingest import IngestReport, ingest_night, ingest_source
from tasks.data.ingest_report import publish_ingestion
from tasks.nightly.alert import alert_night
from tasks.nightly.drift import check_drift
from tasks.nightly.night_report import BackfillProgress, NightResult, ScopeNight, publish_night
from tasks.nightly.score import NightPlan, commit_night, plan_night, score_shard


@flow(name="nightowl-score-night")
def score_night_flow(dataset: ConfigRef, day: date, plan: NightPlan,
                     config: str | None = None) -> list[ScopeNight]:
    """Score every shard, then check drift and alert per model scope (fanned out). Takes a
    config reference: Prefect stores a flow run's parameters, and the config holds secrets."""
    cfg = dataset.resolve()
    run_logger(__name__).info("%s %s: %d rows in %d shard(s) for %d model(s) on %s", cfg.name, day,
                              plan.rows, len(plan.shards), len(plan.groups), describe(cfg))
    shards = [f.result() for f in [score_shard.submit(cfg, day, s) for s in plan.shards]]
    scored = commit_night(cfg, day, shards)
    drift = [check_drift.submit(cfg.for_group(s.group), day, s, config) for s in scored]
    alerts = [alert_night.submit(cfg.for_group(s.group), day, s) for s in scored]
    return [ScopeNight(s, d.result(), a.result()) for s, d, a in zip(scored, drift, alerts)]


def run_night(cfg: DatasetConfig, day: date, config: str | None,
              ingestion: IngestReport) -> NightResult:
    """Everything after ingestion for one night (shared by nightly and backfill)."""
    plan = plan_night(cfg, day)
    night = NightResult(cfg.name, day.isoformat(), ingestion, plan)
    if plan.shards:
        scopes = score_night_flow.with_options(task_runner=task_runner(cfg))(
            ConfigRef.of(cfg), day, plan, config)
        night = replace(night, scopes=scopes)
    else:
        run_logger(__name__).warning("%s: nothing to score for the night of %s (%d rows; "
                                     "reported, not failed)", cfg.name, day, plan.rows)
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
        nights.append(night.scoring_json() | {"night": d.isoformat()})
    return nights
