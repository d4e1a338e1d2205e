"""Anomaly alerts: one per contiguous anomalous segment, never one per row, never twice.

A segment is a run of consecutive rows of one entity whose verdict is anomalous
and whose score is at or above `alerts.level` x threshold. Each is sent once:
an alert ledger in the store (keyed by entity + segment start) makes reruns and
backfills silent for segments already alerted. The webhook body is Slack
compatible ({"text", "blocks"}); the URL comes from the environment or a Prefect
Secret block and is never logged. Every alert also goes to a JSON-lines log.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import httpx
import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import AlertConfig, DatasetConfig
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.nightly.score import ScoredNight
from tasks.scoring import CONTRIB_PREFIX
from tasks.store import Store

log = logging.getLogger(__name__)
TOP_FEATURES = 3
TOP_SEGMENTS = 20  # segments a night's result (and its UI table) carries; the log has all


@dataclass(frozen=True)
class AlertSummary:
    """A night's alerting: counts, the log's key, and the top segments by peak score."""

    group: str | None
    segments: int
    sent: int
    log: str
    top: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def find_segments(scores: pl.DataFrame, level: float, min_rows: int = 1) -> pl.DataFrame:
    """Contiguous alert-level runs per entity: entity, start, end, rows, peak, top features."""
    contrib = [c for c in scores.columns if c.startswith(CONTRIB_PREFIX)]
    hot = pl.col("is_anomaly") & (pl.col("score") >= level * pl.col("threshold"))
    flagged = scores.sort("entity", "timestamp").with_columns(hot.alias("_hot"))
    run_id = (pl.col("_hot") != pl.col("_hot").shift(1).over("entity")).fill_null(True)
    flagged = flagged.with_columns(run_id.cast(pl.Int32).cum_sum().alias("_run")).filter("_hot")
    segments = flagged.group_by("entity", "_run", maintain_order=True).agg(
        pl.col("timestamp").min().alias("start"),
        pl.col("timestamp").max().alias("end"),
        pl.len().alias("rows"),
        pl.col("score").max().alias("peak_score"),
        pl.col("threshold").first().alias("threshold"),
        pl.col("model_version").first().alias("model_version"),
        *(pl.col(c).sum().alias(c) for c in contrib),
    ).filter(pl.col("rows") >= min_rows)
    tops = [_top_features(row, contrib) for row in segments.select(contrib).iter_rows()]
    return segments.drop("_run", *contrib).with_columns(
        pl.Series("top_features", tops, dtype=pl.List(pl.String))
    )


def _top_features(values: tuple[float, ...], names: list[str]) -> list[str]:
    order = sorted(range(len(values)), key=lambda i: -(values[i] or 0.0))
    return [names[i][len(CONTRIB_PREFIX):] for i in order[:TOP_FEATURES]]


def segment_id(entity: str, start: datetime) -> str:
    return f"{entity}@{start.isoformat()}"


def slack_message(dataset: str, seg: dict[str, Any]) -> dict[str, Any]:
    """Slack-compatible JSON: a plain `text` fallback plus one section block."""
    text = (f"nightowl: anomaly in {dataset} / {seg['entity']} from {seg['start']} to "
            f"{seg['end']} ({seg['rows']} rows, peak {seg['peak_score']:.3g} vs threshold "
            f"{seg['threshold']:.3g}); top features: {', '.join(seg['top_features'])}")
    return {"text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{dataset}* — {text[9:]}"}},
        {"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"model {seg['model_version']} · id `{seg['id']}`"}]},
    ]}


def webhook_url(cfg: AlertConfig) -> str | None:
    """The webhook URL: a Prefect Secret block if configured, else the environment."""
    if cfg.webhook_secret_block:
        from prefect.blocks.system import Secret

        return str(Secret.load(cfg.webhook_secret_block).get())
    return os.environ.get(cfg.webhook_url_env) or None


def ledger_key(cfg: DatasetConfig) -> str:
    return f"alerts/{cfg.scope_name}/ledger.json"


def log_key(cfg: DatasetConfig, day: date) -> str:
    return f"alerts/{cfg.scope_name}/date={day.isoformat()}/alerts.jsonl"


def post(url: str, body: dict[str, Any]) -> None:
    """POST with retries on connection errors; raises on an HTTP error status."""
    transport = httpx.HTTPTransport(retries=3)
    with httpx.Client(transport=transport, timeout=10.0) as client:
        client.post(url, json=body).raise_for_status()


def send_alerts(store: Store, cfg: DatasetConfig, day: date, scores: pl.DataFrame,
                url: str | None) -> AlertSummary:
    """Alert each new segment once; record it in the ledger only after it was delivered."""
    segments = find_segments(scores, cfg.alerts.level, cfg.alerts.min_rows)
    ledger: dict[str, Any] = store.read_json(ledger_key(cfg)) if store.exists(ledger_key(cfg)) else {}
    records, sent = [], 0
    for seg in segments.iter_rows(named=True):
        seg["id"] = segment_id(seg["entity"], seg["start"])
        is_new = seg["id"] not in ledger
        deliver = is_new and url is not None and sent < cfg.alerts.max_per_night
        if deliver:
            post(url, slack_message(cfg.name, seg))
            sent += 1
            ledger[seg["id"]] = {"sent_at": datetime.now(UTC).isoformat(), "night": day.isoformat()}
            store.write_json(ledger_key(cfg), ledger)
        records.append({**seg, "dataset": cfg.name, "night": day.isoformat(),
                        "status": "sent" if deliver else ("duplicate" if not is_new else "unsent")})
    lines = "".join(json.dumps(r, default=str, sort_keys=True) + "\n" for r in records)
    store.write_bytes(log_key(cfg, day), lines.encode())
    return AlertSummary(cfg.group, len(records), sent, log_key(cfg, day), top_segments(records))


def peak_ratio(segment: dict[str, Any]) -> float:
    """Peak score over its model's threshold: comparable across the models of a fleet."""
    return segment["peak_score"] / segment["threshold"] if segment["threshold"] > 0 else np.inf


def top_segments(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The highest-peaked segments, flattened for a table (JSON-able values only)."""
    rows = sorted(records, key=lambda r: -peak_ratio(r))[:TOP_SEGMENTS]
    return [{"entity": r["entity"], "start": str(r["start"]), "end": str(r["end"]),
             "rows": r["rows"], "peak_score": round(r["peak_score"], 4),
             "x_threshold": round(peak_ratio(r), 3),
             "top_features": ", ".join(r["top_features"]), "alert": r["status"]} for r in rows]


@task(name="alert", cache_policy=NO_CACHE, **IO_RETRIES)
def alert_night(cfg: DatasetConfig, day: date, scored: ScoredNight) -> AlertSummary:
    """Send tonight's new anomaly segments; write the structured alert log of the night."""
    assert scored.keys, "alerting needs a scored night"
    store = store_for(cfg)
    url = webhook_url(cfg.alerts)
    scores = pl.concat([pl.from_arrow(store.read_parquet(k)) for k in scored.keys])
    result = send_alerts(store, cfg, day, scores, url)
    logger = run_logger(__name__)
    if url is None and result.segments:
        logger.warning("%s %s: %d anomaly segments but no webhook configured (%s)", cfg.label, day,
                       result.segments, cfg.alerts.webhook_url_env)
    logger.info("%s %s: %d segments, %d alerts sent, log %s", cfg.label, day, result.segments,
                result.sent, result.log)
    return result
