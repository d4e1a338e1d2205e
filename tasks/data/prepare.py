"""Prepare a dataset for training: scaled Parquet, scaler JSON, window index, drift reference.

Each output is keyed by the scaler's content hash, so the same train rows give
the same keys and a retry rewrites them. Stages hand each other these keys
(`PreparedData`), never the frames.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig, SplitsConfig
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.data.labelled import (
    OperatorLabels,
    apply_labels,
    evidence,
    naive_utc,
    periods_outside,
    sampling_step,
)
from tasks.data.layer import entity_rows, load_validated, table_version
from tasks.data.scale import ScalerParams, apply_scaler, fit_scaler
from tasks.data.window import build_window_index
from tasks.evaluation.drift_statistics import data_reference
from tasks.store import Store


@dataclass(frozen=True)
class ScaledData:
    """Store keys of the scaled train + validation rows, their scaler and drift reference."""

    scaled_key: str
    scaler_key: str
    reference_key: str
    rows: int
    table_version: int | None = None  # the validated table's snapshot the rows came from
    evidence: dict[str, object] | None = None  # validation events by origin (labelled.Evidence)


@dataclass(frozen=True)
class PreparedData:
    """Store keys of one prepared training dataset (passed between tasks, not the data)."""

    scaled_key: str
    scaler_key: str
    reference_key: str
    windows_key: str
    rows: int
    windows: int
    table_version: int | None = None  # lineage: rebuild with tasks.training.lineage
    evidence: dict[str, object] | None = None  # validation events by origin, labels version

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ScopePlan:
    """Which model scopes a training run covers: None is the dataset-level model; each other
    entry an entity or group. `skipped` names those with too few train rows for a model."""

    groups: list[str | None]
    skipped: dict[str, int]


@task(name="plan-model-scopes", cache_policy=NO_CACHE, **IO_RETRIES)
def plan_scopes(cfg: DatasetConfig) -> ScopePlan:
    """The dataset's model scopes: one model, or one per entity / group with enough train rows
    (plus the dataset-level fallback model when configured)."""
    if cfg.model.scope == "dataset":
        return ScopePlan([None], {})
    rows = entity_rows(store_for(cfg), cfg.for_group(None), cfg.splits.train.start,
                       cfg.splits.train.end)
    if cfg.model.scope == "entity":
        sizes = rows
    else:
        sizes = {g: sum(rows.get(e, 0) for e in members) for g, members in cfg.model.groups.items()}
    groups = sorted(g for g, n in sizes.items() if n >= cfg.model.min_train_rows)
    skipped = {g: n for g, n in sorted(sizes.items()) if n < cfg.model.min_train_rows}
    if skipped:
        run_logger(__name__).warning("%s: no model for %d %s(s) with fewer than %d train rows: %s",
                                     cfg.name, len(skipped), cfg.model.scope,
                                     cfg.model.min_train_rows, list(skipped)[:20])
    bound = cfg.limits.model_scopes
    if len(groups) > bound:  # the most train rows first; ties by name, so the plan is stable
        over = sorted(groups, key=lambda g: (-sizes[g], g))[bound:]
        run_logger(__name__).warning(
            "%s: %d %s models past bound 'limits.model_scopes = %d': %d %s(s) with the fewest "
            "train rows get none (scored by the fallback model if any): %s", cfg.name,
            len(groups), cfg.model.scope, bound, len(over), cfg.model.scope, over[:20])
        skipped = dict(sorted({**skipped, **{g: sizes[g] for g in over}}.items()))
        groups = sorted(set(groups) - set(over))
    return ScopePlan(([None] if cfg.model.fallback else []) + list(groups), skipped)


def assign_splits(frame: pl.DataFrame, splits: SplitsConfig, with_score: bool = True) -> pl.DataFrame:
    """Tag each row train / validation / score / none by its timestamp."""
    ts = pl.col("timestamp")
    expr = pl.when((ts >= splits.train.start) & (ts < splits.train.end)).then(pl.lit("train"))
    for r in splits.validation:
        expr = expr.when((ts >= r.start) & (ts < r.end)).then(pl.lit("validation"))
    if with_score and splits.score is not None:
        expr = expr.when((ts >= splits.score.start) & (ts < splits.score.end)).then(pl.lit("score"))
    return frame.with_columns(expr.otherwise(pl.lit("none")).alias("split"))


def training_range(splits: SplitsConfig) -> tuple[datetime, datetime]:
    starts = [splits.train.start, *(r.start for r in splits.validation)]
    ends = [splits.train.end, *(r.end for r in splits.validation)]
    return min(starts), max(ends)


@task(name="scale", cache_policy=NO_CACHE, **IO_RETRIES)
def scale_dataset(cfg: DatasetConfig, labels: OperatorLabels | None = None) -> ScaledData:
    """Fit the scaler on train rows only; write scaled rows (train + validation) as Parquet,
    and the drift reference of the scaled normal train rows (the same for every family).

    `labels` (the operators' answers, read by the flow) relabel their rows; labelled rows
    outside the train range join the validation split (tasks.data.labelled).
    """
    store = store_for(cfg)
    labels = (labels or OperatorLabels()).for_entities(cfg.group_entities())
    version = table_version(store, cfg)  # one snapshot, recorded: the set can be rebuilt
    frame = labelled_rows(store, cfg, labels, version)
    train = frame.filter(pl.col("split") == "train")
    scaler = fit_scaler(train, cfg.columns.features, cfg.scaling.method)
    scaler_json = scaler.to_json()
    scaler_id = hashlib.sha256(json.dumps(scaler_json, sort_keys=True).encode()).hexdigest()[:12]
    if labels.periods:  # the same scaler over other labels: other rows, another folder
        scaler_id += "-" + hashlib.sha256(repr(labels.periods).encode()).hexdigest()[:8]
    prefix = f"datasets/{cfg.scope_name}/scaled/{scaler_id}"
    scaled = apply_scaler(frame, scaler)
    normal_train = scaled.filter((pl.col("split") == "train") & (pl.col("label") == 0))
    store.write_json(f"{prefix}/scaler.json", scaler_json)
    store.write_json(f"{prefix}/drift_reference.json",
                     data_reference(normal_train, cfg.columns.features, cfg.drift.bins))
    store.write_parquet(f"{prefix}/scaled.parquet", scaled.to_arrow())
    found = evidence(scaled, labels)
    run_logger(__name__).info(
        "scaled %d rows (%d train) with %s scaler %s; validation events: %d from slices, %d "
        "from %d operator label(s)", frame.height, train.height, cfg.scaling.method, scaler_id,
        found.events_from_slices, found.events_from_labels, len(labels.periods))
    return ScaledData(f"{prefix}/scaled.parquet", f"{prefix}/scaler.json",
                      f"{prefix}/drift_reference.json", frame.height, version, found.to_json())


def labelled_rows(store: Store, cfg: DatasetConfig, labels: OperatorLabels,
                  version: int | None) -> pl.DataFrame:
    """The training range's rows with their splits, plus every labelled period outside it
    (with `window.length` rows of context before it, split "none"), the labels applied."""
    start, end = training_range(cfg.splits)
    frame = load_validated(store, cfg, start, end, version=version)
    outside = periods_outside(labels, start, end)
    if outside:
        margin = sampling_step(frame) * cfg.window.length
        extra = [load_validated(store, cfg, naive_utc(p.start) - margin,
                                naive_utc(p.end) + margin, [p.entity], version=version)
                 for p in outside]
        frame = pl.concat([frame, *extra]).unique(["entity", "timestamp"]).sort(
            "entity", "timestamp")
    frame = assign_splits(frame, cfg.splits, with_score=False)
    return apply_labels(frame, labels, cfg.splits.train.start, cfg.splits.train.end)


@task(name="window", cache_policy=NO_CACHE, **IO_RETRIES)
def window_dataset(cfg: DatasetConfig, scaled: ScaledData) -> PreparedData:
    """Write the window index (not the windows) next to the scaled rows."""
    store = store_for(cfg)
    frame = pl.from_arrow(store.read_parquet(scaled.scaled_key))
    index = build_window_index(frame, cfg.window.length, cfg.window.stride)
    scaler_id = scaled.scaled_key.split("/")[-2]
    key = (f"datasets/{cfg.scope_name}/windows/{scaler_id}/"
           f"L{cfg.window.length}-S{cfg.window.stride}.parquet")
    store.write_parquet(key, index.to_arrow())
    counts = dict(index.group_by("split").len().iter_rows())
    run_logger(__name__).info("window index %s: %s", key, counts)
    return PreparedData(scaled.scaled_key, scaled.scaler_key, scaled.reference_key, key,
                        scaled.rows, index.height, scaled.table_version, scaled.evidence)


def load_prepared(cfg: DatasetConfig, prepared: PreparedData
                  ) -> tuple[pl.DataFrame, pl.DataFrame, ScalerParams]:
    """(scaled rows, window index, scaler) of a prepared dataset."""
    store = store_for(cfg)
    scaled = pl.from_arrow(store.read_parquet(prepared.scaled_key))
    index = pl.from_arrow(store.read_parquet(prepared.windows_key))
    scaler = ScalerParams.from_json(store.read_json(prepared.scaler_key))
    return scaled, index, scaler
