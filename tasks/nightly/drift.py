"""The nightly drift check: tonight's scaled rows and scores against the scoring version's
training reference; on drift, the `nightowl.drift.detected` event that triggers retraining.

Statistics live in tasks.evaluation.drift_statistics (pure); this stage reads its inputs by
key (the night's scores partition, the rows the shards scaled for scoring, the
version's reference; nothing is scaled twice), writes
drift/<ds>/date=…/report.json and debounces the event with a cooldown.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, clip, run_logger, store_for
from tasks.evaluation.drift_statistics import drift_report
from tasks.nightly.score import ScoredNight
from tasks.store import Store
from tasks.versions import DRIFT_REFERENCE, VersionRef, has_file, load_version_files

EVENT = "nightowl.drift.detected"


@dataclass(frozen=True)
class DriftVerdict:
    """A scope's drift verdict for a night (per-feature statistics stay in the stored report)."""

    date: str
    group: str | None
    status: str  # "checked" | "no-reference"
    drift: bool
    reasons: list[str] = field(default_factory=list)
    event: str | None = None
    score_ks: float | None = None
    anomaly_rate: float | None = None
    drifted_features: list[str] = field(default_factory=list)
    key: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def drift_key(cfg: DatasetConfig, day: date) -> str:
    return f"drift/{cfg.scope_name}/date={day.isoformat()}/report.json"


def last_event_key(cfg: DatasetConfig) -> str:
    return f"drift/{cfg.scope_name}/LAST_EVENT.json"


def in_cooldown(store: Store, cfg: DatasetConfig, now: datetime) -> bool:
    """Debounce: a drift event was already emitted within the cooldown."""
    key = last_event_key(cfg)
    return _cooling(cfg, store.read_json(key) if store.exists(key) else None, now)


def _cooling(cfg: DatasetConfig, marker: dict[str, Any] | None, now: datetime) -> bool:
    if marker is None:
        return False
    last = datetime.fromisoformat(marker["emitted_at"])
    return now - last < timedelta(hours=cfg.drift.cooldown_hours)


def claim_event(store: Store, cfg: DatasetConfig, day: date, now: datetime
                ) -> tuple[str | None, dict[str, Any] | None]:
    """Take the right to emit by compare-and-swap of LAST_EVENT: (claim token, marker before).

    None when another emission is within the cooldown: two nights checked at the same
    time emit one event, not two (a plain read-then-write would let both through).
    """
    token = uuid.uuid4().hex
    before: list[dict[str, Any] | None] = [None]

    def change(marker: dict[str, Any] | None) -> dict[str, Any] | None:
        if marker is not None and marker.get("claim") == token:
            return marker  # our earlier attempt landed (its reply was lost)
        before[:] = [marker]
        if _cooling(cfg, marker, now):
            return marker
        return {"emitted_at": now.isoformat(), "date": day.isoformat(), "event_id": None,
                "claim": token}

    stored, _ = store.update_json(last_event_key(cfg), change)
    ours = stored is not None and stored.get("claim") == token
    return (token if ours else None), before[0]


def settle_event(store: Store, cfg: DatasetConfig, token: str, event_id: str | None,
                 before: dict[str, Any] | None, emitted: bool) -> None:
    """Record the emitted event's id on our claim, or put the old marker back if emitting failed."""
    def change(marker: dict[str, Any] | None) -> dict[str, Any] | None:
        if marker is None or marker.get("claim") != token:
            return marker  # someone else's claim now: leave it
        return {**marker, "event_id": event_id} if emitted else before

    store.update_json(last_event_key(cfg), change)


def emit_drift_event(cfg: DatasetConfig, day: date, reasons: list[str],
                     config_path: str | None) -> str | None:
    """Emit `nightowl.drift.detected` (resource = the dataset, payload names the entity /
    group whose model drifted, "" for the dataset-level model); returns the event id."""
    from prefect.events import emit_event

    event = emit_event(
        event=EVENT,
        resource={"prefect.resource.id": f"nightowl.dataset.{cfg.name}",
                  "prefect.resource.name": cfg.name},
        payload={"dataset": cfg.name, "group": cfg.group or "", "date": day.isoformat(),
                 "config": config_path, "reasons": reasons},
    )
    return str(event.id) if event is not None else None


def version_reference(store: Store, ref: VersionRef) -> dict[str, Any] | None:
    """A version's drift reference (None for versions registered without one)."""
    if not has_file(store, ref, DRIFT_REFERENCE):
        return None
    return json.loads(load_version_files(store, ref, [DRIFT_REFERENCE])[DRIFT_REFERENCE])


def read_parts(store: Store, keys: list[str], columns: list[str] | None = None) -> pl.DataFrame:
    """The scores of a scope's night: its parts, concatenated."""
    return pl.concat([pl.from_arrow(store.read_parquet(k, columns)) for k in keys])


def night_report(cfg: DatasetConfig, store: Store, day: date, scored: ScoredNight) -> dict[str, Any]:
    """Every statistic of the night against the reference of the version that scored it."""
    assert scored.keys and scored.model is not None
    reference = version_reference(store, scored.model)
    if reference is None:
        return {"drift": False, "reasons": [], "status": "no-reference"}
    if not scored.scaled_keys:
        raise ValueError(f"{cfg.label} {day}: the scored night lists no scaled rows "
                         f"(ScoredNight.scaled_keys); score it with tasks.nightly.score first")
    scores = read_parts(store, scored.keys, ["entity", "score", "is_anomaly"])
    rows = read_parts(store, scored.scaled_keys)  # scaled once, by the shard that scored them
    report = drift_report(reference, rows, list(reference["features"]), cfg.drift,
                          scores["score"].to_numpy(), scores["is_anomaly"].to_numpy())
    return {**report, "status": "checked"}


@task(name="drift-check", cache_policy=NO_CACHE, **IO_RETRIES)
def check_drift(cfg: DatasetConfig, day: date, scored: ScoredNight,
                config_path: str | None = None) -> DriftVerdict:
    """Write drift/<ds>/date=…/report.json; on drift emit the event unless in cooldown."""
    logger = run_logger(__name__)
    store = store_for(cfg)
    report = night_report(cfg, store, day, scored)
    report.update(date=day.isoformat(), dataset=cfg.name, group=cfg.group, event=None)
    now = datetime.now(UTC)
    if report["drift"]:
        token, before = claim_event(store, cfg, day, now)
        if token is None:
            report["event"] = "suppressed (cooldown)"
        else:
            try:
                event_id = emit_drift_event(cfg, day, report["reasons"], config_path)
            except Exception:
                settle_event(store, cfg, token, None, before, emitted=False)
                raise
            settle_event(store, cfg, token, event_id, before, emitted=True)
            report["event"] = event_id
        logger.warning("%s %s: drift (%s); event %s", cfg.label, day,
                       clip("; ".join(report["reasons"])), report["event"])
    key = drift_key(cfg, day)
    store.write_json(key, report)
    return DriftVerdict(day.isoformat(), cfg.group, report["status"], bool(report["drift"]), report["reasons"],
                        report["event"], _number(report.get("score_ks")),
                        _number(report.get("anomaly_rate")), report.get("drifted_features", []),
                        key)


def _number(value: Any) -> float | None:
    return None if value is None or value != value else float(value)
