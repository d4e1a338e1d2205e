"""Nightly scoring: ingest the new day, score it with the champion, write scores/<ds>/date=…"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from prefect import flow

from flows.common import resolve_config
from tasks.ingest import ingest_source
from tasks.score import score_day


@flow(name="nightowl-nightly", log_prints=True)
def nightly_flow(config: str | None = None, day: date | None = None) -> dict[str, Any]:
    """Score one night (yesterday by default). Rerunning a night replaces its partition."""
    cfg = resolve_config(config)
    day = day or date.today() - timedelta(days=1)
    ingestion = ingest_source(cfg)
    return {"dataset": cfg.name, "ingestion": ingestion, "scoring": score_day(cfg, day)}


@flow(name="nightowl-backfill", log_prints=True)
def backfill_flow(config: str | None = None, start: date | None = None,
                  end: date | None = None) -> list[dict[str, Any]]:
    """Score every day in [start, end); defaults to the config's score range."""
    cfg = resolve_config(config)
    if start is None or end is None:
        if cfg.splits.score is None:
            raise ValueError("backfill needs start and end, or splits.score in the config")
        start = start or cfg.splits.score.start.date()
        end = end or cfg.splits.score.end.date()
    ingest_source(cfg)
    days = [start + timedelta(days=i) for i in range((end - start).days)]
    return [score_day(cfg, d) for d in days]
