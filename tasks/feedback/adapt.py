"""Labels act between retrainings: thresholds recalibrated on reviewed false alarms, and
missed incidents raising the drift event.

**Adaptive thresholds.** The threshold promises a false-alarm rate (`threshold.target_fpr`)
on normal rows. Per entity, the reviewed evidence is the rows of every day on which an
operator dismissed one of its alerts (a `normal` label), less the rows labelled `anomaly`.
The false alarms are the dismissed rows the champion alerts on (score > threshold).
Unreviewed alerts of those days are *not* counted as false alarms, so the count is a lower
bound and the test errs on keeping the threshold. The test is one-sided binomial:

    H0: the entity's false-alarm rate <= target_fpr
    k = dismissed rows over the threshold, n = normal rows of the reviewed days (>= min_reviewed_rows)
    recalibrate when P(X >= k | n, target_fpr) < 1 - [feedback] adapt_confidence

A failed test raises the entity's threshold to the (1 - target_fpr) quantile of the
champion's scores on those normal rows (never lowers it), without retraining: the same
version's files with a new threshold.json are registered as a new version (its own id and
MANIFEST), the champion pointer moves to it by compare-and-swap, and the decision is
written to models/<scope>/decisions/ like a retraining's.

**Missed incidents.** An `anomaly` label recorded after the champion's promotion on a
period the champion scores wholly below its threshold is a missed incident; when
`[feedback] missed_incidents` of them accumulate, the scope gets the drift event
(tasks.nightly.drift.EVENT, debounced by the same cooldown) with the reason, so the
retrain deployment runs.

Scores come from tasks.scoring's one path (what the night gives those rows), with the
champion as it is now, not the scores table (which may hold an older version's scores).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.data.labelled import ONE_TICK, naive_utc
from tasks.data.layer import load_validated
from tasks.evaluation.normalise import entity_threshold, thresholds_by_entity
from tasks.feedback.labels import current_labels
from tasks.nightly.drift import claim_event, emit_drift_event, settle_event
from tasks.scoring import VersionScorer, score_version, validated_context, version_scorer
from tasks.store import Store, json_bytes
from tasks.versions import (
    THRESHOLD,
    ChampionConflict,
    champion_ref,
    load_version_files,
    read_champion,
    read_manifest,
    register_version,
    set_champion,
)

KEPT_DETAILS = ("candidates", "rule", "selection")  # what a recalibration keeps of the pointer


@dataclass(frozen=True)
class FalseAlarmTest:
    """One entity's binomial test of its reviewed false alarms against the FPR promise."""

    entity: str
    reviewed_days: list[str]
    normal_rows: int
    false_alarms: int
    target_fpr: float
    p_value: float
    confidence: float
    min_rows: int
    threshold: float
    proposed: float | None = None

    @property
    def exceeds(self) -> bool:
        """The promise is broken at the stated confidence, on enough rows."""
        return bool(self.normal_rows >= self.min_rows and self.p_value < 1 - self.confidence)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "exceeds": self.exceeds,
                "statement": (f"P(X >= {self.false_alarms} | n={self.normal_rows}, "
                              f"p={self.target_fpr}) = {self.p_value:.3g} vs "
                              f"{1 - self.confidence:.3g}")}


@dataclass(frozen=True)
class FeedbackCheck:
    """What one check of a scope's labels did."""

    scope: str
    champion: str | None
    tests: list[dict[str, Any]] = field(default_factory=list)
    recalibrated: dict[str, Any] | None = None
    missed: list[dict[str, Any]] = field(default_factory=list)
    event: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided test's p-value.

    Summed in log space (exact; n of many days of rows is fine) rather than scipy's
    `binomtest`: the review flow that runs this check runs on scoring workers, whose
    `nightowl[scoring]` install has no scipy (tests check it against scipy).
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
             + i * log_p + (n - i) * log_q for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def scored(store: Store, cfg: DatasetConfig, version: VersionScorer, entity: str,
           start: datetime, end: datetime) -> pl.DataFrame:
    """The champion's scores of an entity's rows in [start, end), with each row's threshold."""
    rows = load_validated(store, cfg, start, end, [entity])
    context = validated_context(store, cfg, start, [entity], version.loaded.window)
    out = score_version(version, rows, context)
    limits, _ = thresholds_by_entity(out.scores, out.rows["entity"].to_numpy(),
                                     version.loaded.threshold)
    return out.rows.select("entity", "timestamp").with_columns(
        score=pl.Series(out.scores, dtype=pl.Float64), limit=pl.Series(limits, dtype=pl.Float64))


def covered(frame: pl.DataFrame, periods: pl.DataFrame) -> pl.Series:
    """Which rows of `frame` (one entity) fall in any of `periods` (end included)."""
    mask = pl.Series([False] * frame.height)
    ts = frame["timestamp"]
    for start, end in periods.select("start", "end").iter_rows():
        mask |= (ts >= naive_utc(start)) & (ts < naive_utc(end) + ONE_TICK)
    return mask


def false_alarm_test(store: Store, cfg: DatasetConfig, version: VersionScorer,
                     entity: str, labels: pl.DataFrame) -> FalseAlarmTest | None:
    """The test for one entity (None: no dismissed alert of it)."""
    dismissed = labels.filter(pl.col("verdict") == "normal")
    if dismissed.is_empty():
        return None
    days = sorted({naive_utc(t).date() for t in dismissed["start"]}
                  | {naive_utc(t).date() for t in dismissed["end"]})
    frame = pl.concat([scored(store, cfg, version, entity, _midnight(d),
                              _midnight(d) + timedelta(days=1)) for d in days])
    anomalous = covered(frame, labels.filter(pl.col("verdict") == "anomaly"))
    normal = frame.filter(~anomalous & pl.col("score").is_finite())
    is_dismissed = covered(normal, dismissed)
    alarms = int((is_dismissed & (normal["score"] > normal["limit"])).sum())
    fpr = cfg.threshold.target_fpr
    n = normal.height
    p_value = binomial_tail(alarms, n, fpr)
    current = float(entity_threshold(version.loaded.threshold, entity)["threshold"])
    proposed = (max(current, float(np.quantile(normal["score"].to_numpy(), 1 - fpr)))
                if n else None)
    return FalseAlarmTest(entity, [d.isoformat() for d in days], n, alarms, fpr, p_value,
                          cfg.feedback.adapt_confidence, cfg.feedback.min_reviewed_rows,
                          current, proposed)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time())


def recalibrated_threshold(threshold: dict[str, Any], moved: list[FalseAlarmTest],
                           at: str) -> dict[str, Any]:
    """threshold.json with each moved entity's own threshold raised (its p-value reference
    and method kept), and why."""
    per_entity = dict(threshold.get("per_entity", {}))
    for t in moved:
        own = entity_threshold(threshold, t.entity)
        per_entity[t.entity] = {
            **{k: own[k] for k in ("method", "normaliser", "n_validation_normal", "fpr")
               if k in own},
            "threshold": t.proposed,
            "recalibrated": {"at": at, "from": t.threshold, "test": t.to_json()}}
    return {**threshold, "per_entity": per_entity}


def recalibrate(store: Store, cfg: DatasetConfig, pointer: dict[str, Any],
                version: VersionScorer, tests: list[FalseAlarmTest]) -> dict[str, Any] | None:
    """Register the champion's files with the raised thresholds as a new version, move the
    pointer to it, record the decision; None when no entity's threshold moves."""
    moved = [t for t in tests if t.exceeds and t.proposed is not None
             and t.proposed > t.threshold]
    if not moved:
        return None
    at = datetime.now(UTC).isoformat()
    ref = champion_ref(pointer)
    manifest = read_manifest(store, ref)
    files = load_version_files(store, ref, list(manifest["files"]))  # sha256-checked
    files[THRESHOLD] = json_bytes(recalibrated_threshold(version.loaded.threshold, moved, at))
    new = register_version(store, ref.dataset, ref.family, files, manifest.get("members"))
    reason = "; ".join(f"{t.entity}: {t.false_alarms} reviewed false alarm(s) in "
                       f"{t.normal_rows} normal rows exceed target_fpr {t.target_fpr} "
                       f"(p={t.p_value:.3g}); threshold {t.threshold:.4g} -> {t.proposed:.4g}"
                       for t in moved)
    decision: dict[str, Any] = {
        "at": at, "dataset": cfg.name, "kind": "recalibration", "trigger": {"labels": True},
        "champion": {"family": ref.family, "version": ref.version, "stored": pointer},
        "challenger": new.to_json(), "tests": [t.to_json() for t in tests],
        "promoted": True, "reason": reason}
    try:
        decision["pointer"] = set_champion(
            store, new, pointer["metric"], float(pointer["value"]),
            expected_generation=int(pointer["generation"]),
            details={**{k: pointer[k] for k in KEPT_DETAILS if k in pointer},
                     "promoted_by": "recalibration", "reason": reason,
                     "recalibrated_from": ref.version,
                     # the model's own promotion: missed incidents count from there
                     "promoted_at": pointer.get("promoted_at") or pointer["updated_at"]})
    except ChampionConflict as err:
        decision.update(promoted=False, reason=f"champion changed meanwhile: {err}")
    key = f"models/{cfg.scope_name}/decisions/{at.replace(':', '').replace('+0000', 'Z')}.json"
    store.write_json(key, decision)
    run_logger(__name__).info("%s: recalibration %s (%s) -> %s", cfg.label,
                              "applied" if decision["promoted"] else "not applied",
                              decision["reason"], key)
    return {**decision, "key": key}


def missed_incidents(store: Store, cfg: DatasetConfig, version: VersionScorer,
                     labels: pl.DataFrame, since: datetime) -> list[dict[str, Any]]:
    """Anomaly labels recorded after `since` on periods the champion scores wholly below its
    threshold (periods it cannot score at all are not counted)."""
    missed = []
    news = labels.filter((pl.col("verdict") == "anomaly") & (pl.col("recorded_at") > since))
    for row in news.iter_rows(named=True):
        frame = scored(store, cfg, version, row["entity"], naive_utc(row["start"]),
                       naive_utc(row["end"]) + ONE_TICK).filter(pl.col("score").is_finite())
        if frame.height and not (frame["score"] > frame["limit"]).any():
            missed.append({"entity": row["entity"], "start": row["start"].isoformat(),
                           "end": row["end"].isoformat(), "segment": row["segment"],
                           "peak_over_threshold": float((frame["score"] / frame["limit"]).max())})
    return missed


def scope_entities(cfg: DatasetConfig, labels: pl.DataFrame) -> list[str]:
    entities = cfg.group_entities()
    present = labels["entity"].unique().sort().to_list()
    return present if entities is None else [e for e in present if e in entities]


@task(name="feedback-check", cache_policy=NO_CACHE, **IO_RETRIES)
def check_feedback(cfg: DatasetConfig, config_path: str | None = None) -> FeedbackCheck:
    """One scope's labels against its champion: recalibrate thresholds the reviewed false
    alarms break; raise the drift event on enough missed incidents."""
    store = store_for(cfg)
    pointer = read_champion(store, cfg.scope_name)
    if pointer is None:
        return FeedbackCheck(cfg.scope_name, None)
    labels = current_labels(cfg, store)
    labels = labels.filter(pl.col("entity").is_in(scope_entities(cfg, labels)))
    version = version_scorer(cfg, champion_ref(pointer), store)
    tests = [t for e in labels["entity"].unique().sort().to_list()
             if (t := false_alarm_test(store, cfg, version, e,
                                       labels.filter(pl.col("entity") == e))) is not None]
    recalibrated = recalibrate(store, cfg, pointer, version, tests)
    since = datetime.fromisoformat(pointer.get("promoted_at") or pointer["updated_at"])
    missed = missed_incidents(store, cfg, version, labels, since)
    event = None
    if len(missed) >= cfg.feedback.missed_incidents:
        event = raise_retrain(store, cfg, missed, config_path)
    return FeedbackCheck(cfg.scope_name, f"{pointer['family']}/{pointer['version']}",
                         [t.to_json() for t in tests], recalibrated, missed, event)


def raise_retrain(store: Store, cfg: DatasetConfig, missed: list[dict[str, Any]],
                  config_path: str | None) -> str:
    """The drift event with the missed incidents as its reason (debounced like drift's)."""
    day = datetime.now(UTC).date()
    reasons = [f"{len(missed)} missed incident(s) labelled since the champion's promotion "
               f"(>= [feedback] missed_incidents = {cfg.feedback.missed_incidents}): "
               + ", ".join(f"{m['entity']} {m['start']}" for m in missed[:10])]
    token, before = claim_event(store, cfg, day, datetime.now(UTC))
    if token is None:
        return "suppressed (cooldown)"
    try:
        event_id = emit_drift_event(cfg, day, reasons, config_path)
    except Exception:
        settle_event(store, cfg, token, None, before, emitted=False)
        raise
    settle_event(store, cfg, token, event_id, before, emitted=True)
    run_logger(__name__).warning("%s: %s; event %s", cfg.label, reasons[0], event_id)
    return event_id or "emitted"


def feedback_scopes(cfg: DatasetConfig, entities: list[str]) -> list[DatasetConfig]:
    """The model scopes with a champion that judge these entities: the dataset-level model
    and each entity's own (or its group's)."""
    store = store_for(cfg)
    groups: list[str | None] = [None]
    if cfg.model.scope == "entity":
        groups += sorted(set(entities))
    elif cfg.model.scope == "group":
        groups += sorted(g for g, members in cfg.model.groups.items()
                         if set(members) & set(entities))
    scopes = [cfg.for_group(g) for g in groups]
    return [s for s in scopes if read_champion(store, s.scope_name) is not None]
