"""Anomaly alerts: one per contiguous anomalous segment, never one per row, never twice.

A segment is a run of consecutive rows of one entity whose verdict is anomalous
and whose score is at or above `alerts.level` x threshold. Each is sent once:
an alert ledger in the store (keyed by entity + segment start) makes reruns and
backfills silent for segments already alerted. The webhook body is Slack
compatible ({"text", "blocks"}, every interpolated value escaped for mrkdwn); the URL
comes from the environment or a Prefect Secret block and is a secret (a Slack webhook
URL is its own credential): it never appears in a log line, an exception or a report.
Every alert also goes to a JSON-lines log.

Never twice, even when two runs of the same night overlap: a segment is first
*claimed* in the ledger by compare-and-swap, then posted, then marked sent. A claim
whose run died before delivering is claimed again: at once when the claim names a process
on this host that no longer exists (a rerun on the machine that was lost mid-alert), else
after CLAIM_LEASE (the owner ran elsewhere: a pod, a Dask worker); a failed delivery
releases its claims so the next run retries them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import AlertConfig, DatasetConfig
from tasks.common import IO_RETRIES, clip, redact, run_logger, store_for
from tasks.nightly.score import ScoredNight
from tasks.scoring import CONTRIB_PREFIX
from tasks.store import Store

log = logging.getLogger(__name__)
TOP_FEATURES = 3
TOP_SEGMENTS = 20  # segments a night's result (and its UI table) carries; the log has all
CLAIM_LEASE = timedelta(minutes=15)  # a claim older than this belongs to a run that died


class AlertDeliveryError(RuntimeError):
    """A webhook POST failed. The message names the host and the status, never the URL."""


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


def escape_mrkdwn(value: Any) -> str:
    """Slack's escaping of &, < and > (an entity named `<!channel>` must not ping anyone)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(dataset: str, seg: dict[str, Any]) -> dict[str, Any]:
    """Slack-compatible JSON: a plain `text` fallback plus one section block."""
    e = escape_mrkdwn
    body = (f"anomaly in {e(dataset)} / {e(seg['entity'])} from {seg['start']} to "
            f"{seg['end']} ({seg['rows']} rows, peak {seg['peak_score']:.3g} vs threshold "
            f"{seg['threshold']:.3g}); top features: "
            f"{', '.join(e(f) for f in seg['top_features'])}")
    return {"text": f"nightowl: {body}", "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{e(dataset)}* — {body}"}},
        {"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"model {e(seg['model_version'])} · id `{e(seg['id'])}`"}]},
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


def webhook_host(url: str) -> str:
    """What may be said about a webhook URL: scheme and host (the path is the secret)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"


class _RedactUrl(logging.Filter):
    """Keeps the webhook URL out of httpx's own 'HTTP Request: POST <url>' log line."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = redact(record.getMessage(), [self.url])
            record.args = ()
        return True


def post(url: str, body: dict[str, Any]) -> None:
    """POST with retries on connection errors; AlertDeliveryError on failure, without the URL
    (httpx's own errors quote it, so they are replaced, not chained)."""
    transport = httpx.HTTPTransport(retries=3)
    httpx_log = logging.getLogger("httpx")
    redacting = _RedactUrl(url)
    httpx_log.addFilter(redacting)
    try:
        with httpx.Client(transport=transport, timeout=10.0) as client:
            client.post(url, json=body).raise_for_status()
    except httpx.HTTPStatusError as err:
        problem = f"answered HTTP {err.response.status_code}"
    except httpx.HTTPError as err:
        problem = f"could not be reached ({type(err).__name__})"
    else:
        return
    finally:
        httpx_log.removeFilter(redacting)
    raise AlertDeliveryError(f"alert webhook {webhook_host(url)} {problem}")


def _owner() -> dict[str, Any]:
    """Who holds a claim: enough to tell, on the same host, that the holder is gone."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _owner_gone(owner: dict[str, Any] | None) -> bool:
    """The claim's process ran on this host and no longer exists (killed, crashed)."""
    if not owner or owner.get("host") != socket.gethostname():
        return False  # another machine: only the lease can tell
    try:
        os.kill(int(owner["pid"]), 0)  # signal 0: a liveness probe, nothing is sent
    except ProcessLookupError:
        return True
    except (OSError, ValueError):  # alive under another user, or a malformed pid
        return False
    return False


def _open(entry: dict[str, Any] | None, now: datetime) -> bool:
    """Nobody has sent this segment, and nobody alive is sending it."""
    if entry is None:
        return True
    return entry.get("status") == "claimed" and (
        now - datetime.fromisoformat(entry["claimed_at"]) > CLAIM_LEASE
        or _owner_gone(entry.get("owner")))


def retained(ledger: dict[str, Any], day: date, days: int) -> dict[str, Any]:
    """The ledger without sent segments of nights more than `days` before `day`, so it does
    not grow forever (`limits.alert_ledger_days`; rerunning a night older than that alerts
    its segments again). Claims in flight are kept whatever their age."""
    horizon = (day - timedelta(days=days)).isoformat()
    return {sid: e for sid, e in ledger.items()
            if e.get("status") != "sent" or e.get("night", horizon) >= horizon}


def _claim(store: Store, cfg: DatasetConfig, day: date, ids: list[str], token: str) -> list[str]:
    """Claim the segments nobody has sent or is sending (compare-and-swap on the ledger)."""
    now = datetime.now(UTC)
    claimed: list[str] = []

    def change(ledger: dict[str, Any] | None) -> dict[str, Any] | None:
        claimed.clear()
        new = retained(ledger or {}, day, cfg.limits.alert_ledger_days)
        for sid in ids:
            entry = new.get(sid)
            if entry is not None and entry.get("claim") == token:
                claimed.append(sid)  # our earlier attempt landed (its reply was lost)
            elif _open(entry, now):
                new[sid] = {"status": "claimed", "claimed_at": now.isoformat(),
                            "night": day.isoformat(), "claim": token, "owner": _owner()}
                claimed.append(sid)
        return new if new != (ledger or {}) else ledger

    store.update_json(ledger_key(cfg), change)
    return claimed


def _settle(store: Store, cfg: DatasetConfig, sids: list[str], token: str, sent: bool) -> None:
    """Mark our claims sent, or release them (a failed delivery is retried by the next run)."""
    def change(ledger: dict[str, Any] | None) -> dict[str, Any] | None:
        new = dict(ledger or {})
        for sid in sids:
            entry = new.get(sid) or {}
            if entry.get("claim") != token:
                continue  # our claim expired and another run took it over
            if sent:
                new[sid] = {"status": "sent", "sent_at": datetime.now(UTC).isoformat(),
                            "night": entry["night"]}
            else:
                del new[sid]
        return new if new != (ledger or {}) else ledger

    store.update_json(ledger_key(cfg), change)


def send_alerts(store: Store, cfg: DatasetConfig, day: date, scores: pl.DataFrame,
                url: str | None) -> AlertSummary:
    """Alert each new segment once: claim it, post it, mark it sent (each by compare-and-swap)."""
    segments = [{**seg, "id": segment_id(seg["entity"], seg["start"])}
                for seg in find_segments(scores, cfg.alerts.level, cfg.alerts.min_rows)
                .iter_rows(named=True)]
    ledger: dict[str, Any] = store.read_json(ledger_key(cfg)) if store.exists(ledger_key(cfg)) else {}
    now = datetime.now(UTC)
    fresh = [seg["id"] for seg in segments if _open(ledger.get(seg["id"]), now)]
    token = uuid.uuid4().hex
    mine = _claim(store, cfg, day, fresh[: cfg.alerts.max_per_night], token) if url else []
    delivered: set[str] = set()
    for seg in segments:
        if seg["id"] not in mine:
            continue
        try:
            post(url, slack_message(cfg.name, seg))  # type: ignore[arg-type]
        except AlertDeliveryError:
            _settle(store, cfg, [s for s in mine if s not in delivered], token, sent=False)
            raise
        delivered.add(seg["id"])
        _settle(store, cfg, [seg["id"]], token, sent=True)
    allowed = set(fresh[: cfg.alerts.max_per_night]) if url else set()

    def status(sid: str) -> str:
        if sid in delivered:
            return "sent"
        # already in the ledger, or claimed by a concurrent run of this night
        return "unsent" if sid in set(fresh) - allowed else "duplicate"

    records = [{**seg, "dataset": cfg.name, "night": day.isoformat(), "status": status(seg["id"])}
               for seg in segments]
    sent = len(delivered)
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
                       result.segments, clip(cfg.alerts.webhook_url_env, 100))
    logger.info("%s %s: %d segments, %d alerts sent, log %s", cfg.label, day, result.segments,
                result.sent, result.log)
    return result
