"""Retraining decisions: a challenger replaces the champion only if it is better on the same slices.

"Better" is judged fairly: the champion is re-scored on the challenger's
labelled validation slices (the newest data), not compared through numbers it
earned on older data. Either way the decision and its numbers are written to
models/<ds>/decisions/<timestamp>.json.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig, SplitsConfig, TimeRange
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.data.labelled import ONE_TICK, OperatorLabels, apply_labels, naive_utc, periods_outside
from tasks.data.layer import load_validated, validated_days
from tasks.data.prepare import training_range
from tasks.evaluation.metrics import evaluate
from tasks.scoring import (
    ScoredRows,
    VersionScorer,
    score_version,
    validated_context,
    version_scorer,
)
from tasks.training.register import Candidate
from tasks.versions import ChampionConflict, current_champion, read_champion, set_champion


def rolling_splits(cfg: DatasetConfig, end: datetime) -> SplitsConfig:
    """Train on [end - val - train, end - val), validate on [end - val, end)."""
    val = timedelta(days=cfg.retrain.validation_days)
    train = timedelta(days=cfg.retrain.train_days)
    return SplitsConfig(
        train=TimeRange(start=end - val - train, end=end - val),
        validation=[TimeRange(start=end - val, end=end)],
        score=None,
        train_on_normal_only=cfg.splits.train_on_normal_only,
    )


def latest_validated_day(cfg: DatasetConfig) -> datetime:
    """Midnight after the newest day holding validated rows: the default end of the window."""
    days = validated_days(store_for(cfg), cfg)
    if not days:
        raise LookupError(f"dataset {cfg.name!r}: no validated data to retrain on")
    return datetime.combine(max(days), datetime.min.time()) + timedelta(days=1)


def champion_slice_scores(cfg: DatasetConfig, splits: SplitsConfig,
                          labels: OperatorLabels | None = None
                          ) -> tuple[VersionScorer, list[ScoredRows]]:
    """The current champion and its scores of each validation slice, and of each operator-
    labelled period outside the training range, by tasks.scoring's one path: the same
    scores the night gives those rows."""
    store = store_for(cfg)
    version = version_scorer(cfg, current_champion(store, cfg.scope_name), store)
    ranges = [(r.start, r.end, None) for r in splits.validation]
    if labels is not None:
        start, end = training_range(splits)
        ranges += [(naive_utc(p.start), naive_utc(p.end) + ONE_TICK, [p.entity])
                   for p in periods_outside(labels, start, end)]
    return version, [
        score_version(version, load_validated(store, cfg, lo, hi, entities),
                      validated_context(store, cfg, lo, entities, version.loaded.window))
        for lo, hi, entities in ranges]


def champion_on_slices(cfg: DatasetConfig, splits: SplitsConfig,
                       labels: OperatorLabels | None = None) -> dict[str, Any]:
    """The current champion's metrics on the challenger's validation rows (its own
    scaler/threshold): the configured slices plus the labelled periods, labels applied."""
    version, slices = champion_slice_scores(cfg, splits, labels)
    loaded = version.loaded
    frame = pl.concat([s.rows.select("entity", "timestamp", "label").with_columns(
        score=pl.Series(s.scores, dtype=pl.Float64)) for s in slices])
    frame = frame.unique(["entity", "timestamp"], keep="first", maintain_order=True).with_columns(
        split=pl.lit("validation"))
    if labels is not None:
        frame = apply_labels(frame, labels, splits.train.start, splits.train.end)
    frame = frame.filter((pl.col("split") == "validation") & pl.col("score").is_finite())
    # The challenger's window sets the VUS buffer, so both are measured with the same one.
    metrics = evaluate(frame["label"].to_numpy().astype(np.int8), frame["score"].to_numpy(),
                       float(loaded.threshold["threshold"]), cfg.window.length)
    return {"family": loaded.ref.family, "version": loaded.ref.version, "metrics": metrics}


def decide(metric: str, challenger: float, champion: float | None, margin: float) -> tuple[bool, str]:
    """Promote only a defined metric that beats the champion's by more than the margin."""
    if challenger != challenger:
        return False, f"challenger {metric} is undefined"
    if champion is None:
        return True, "no champion yet"
    if champion != champion:
        return True, f"champion {metric} is undefined on these slices"
    if challenger > champion + margin:
        return True, f"challenger {metric} {challenger:.4f} > champion {champion:.4f} + {margin}"
    return False, f"challenger {metric} {challenger:.4f} <= champion {champion:.4f} + {margin}"


@task(name="promote-if-better", cache_policy=NO_CACHE, **IO_RETRIES)
def promote_if_better(
    cfg: DatasetConfig, splits: SplitsConfig, candidates: list[Candidate],
    trigger: dict[str, Any] | None = None, selection: dict[str, Any] | None = None,
    labels: OperatorLabels | None = None,
) -> dict[str, Any]:
    """Compare the challenger (the selection evidence's choice, else the best by the metric)
    with the champion re-scored on the same rows (`labels`: the operators' labelled periods
    the challenger was validated on too); promote or keep; record why."""
    store = store_for(cfg)
    metric = cfg.selection.metric
    chosen = [c for c in candidates if selection and c.family == selection.get("chosen")]
    challenger = chosen[0] if chosen else max(
        candidates, key=lambda c: -np.inf if c.metric(metric) != c.metric(metric)
        else c.metric(metric))
    value, best = challenger.metric(metric), challenger.ref
    pointer = read_champion(store, cfg.scope_name)
    champion = champion_on_slices(cfg, splits, labels) if pointer else None
    champ_value = champion["metrics"].get(metric) if champion else None
    promote, reason = decide(metric, float(value), champ_value, cfg.retrain.min_improvement)
    decision: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(), "dataset": cfg.name, "metric": metric,
        "trigger": trigger or {}, "splits": splits.model_dump(mode="json"),
        "selection": {k: selection.get(k) for k in ("chosen", "fallback", "why", "evidence")}
        if selection else None,
        "challenger": {**best.to_json(), "value": value,
                       "all": {c.family: {"version": c.ref.version, metric: c.metric(metric)}
                               for c in candidates}},
        "champion": {**champion, "value": champ_value, "stored": pointer} if champion else None,
        "promoted": promote, "reason": reason,
    }
    if promote:
        try:
            decision["pointer"] = set_champion(
                store, best, metric, float(value),
                expected_generation=pointer["generation"] if pointer else 0,
                details={"promoted_by": "retrain", "reason": reason})
        except ChampionConflict as err:
            decision.update(promoted=False, reason=f"champion changed meanwhile: {err}")
    key = f"models/{cfg.scope_name}/decisions/{decision['at'].replace(':', '').replace('+0000', 'Z')}.json"
    store.write_json(key, decision)
    run_logger(__name__).info("retrain decision for %s: %s (%s) -> %s", cfg.name,
                              "promote" if decision["promoted"] else "keep", decision["reason"], key)
    return {**decision, "key": key}


def with_splits(cfg: DatasetConfig, splits: SplitsConfig) -> DatasetConfig:
    return cfg.model_copy(update={"splits": splits})


