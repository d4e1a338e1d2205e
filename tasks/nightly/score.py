"""Nightly scoring: each entity's champion scores one day into the scores Delta table.

A night is planned first (`plan_night`): which entities sent rows, which model scores each
(its entity's or group's champion; the dataset-level fallback for entities without one;
none: reported as not modelled, never silently dropped), cut into shards of bounded rows
so memory stays flat however large the fleet. Each shard is one task that stages one
Parquet part; `commit_night` makes them the night in one commit (tasks.nightly.scores_table:
readers see the whole night or the previous one; a rerun replaces it). Per row: score,
per-feature contribution, p-value, threshold, verdict and the model version (schema in
README). Scoring is tasks.scoring's one path (`score_version`): windows need the rows
before midnight, so each entity's last `window - 1` validated rows before the night are its
context, and a row without that much history is reported, not scored. The scaled rows go
beside the scores, by key, for the drift check.

Backend (`[scoring] backend`, tasks.scoring.version_scorer): "torch" runs the champion's
torch model; "onnx" runs its verified model.onnx on ONNX Runtime, with no torch imported
(a `scoring` install has none). A champion without a graph is then scored with torch if
torch is installed, and the night says so (`ScoredNight.note`); without torch the night
fails with the version and the reason its export was refused.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig, scope_slug
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.data.layer import entity_rows, load_validated
from tasks.evaluation.normalise import thresholds_by_entity
from tasks.nightly import scores_table
from tasks.nightly.scores_table import read_scores, scores_prefix  # noqa: F401 - public names
from tasks.scoring import (
    CONTRIB_PREFIX,
    ScoredRows,
    VersionScorer,
    score_version,
    validated_context,
    version_scorer,
)
from tasks.store import Store
from tasks.versions import LoadedModel, VersionRef, current_champion, read_champion

DATASET_PART = "_dataset"  # part-name stem of the dataset-level model (no group can be named so)


@dataclass(frozen=True)
class Shard:
    """Entities one task scores with one scope's champion (`group` None: dataset-level model)."""

    group: str | None
    entities: list[str]
    rows: int
    part: str


@dataclass(frozen=True)
class NightPlan:
    """Who is scored tonight and by which model; who is not, and why."""

    date: str
    rows: int
    shards: list[Shard] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)  # scored by the dataset-level model
    not_modelled: list[str] = field(default_factory=list)  # no model at all: reported, not scored

    @property
    def groups(self) -> list[str | None]:
        return list(dict.fromkeys(s.group for s in self.shards))

    def to_json(self) -> dict[str, Any]:
        return {"date": self.date, "rows": self.rows, "shards": len(self.shards),
                "groups": len(self.groups), "fallback": self.fallback,
                "not_modelled": self.not_modelled}


@dataclass(frozen=True)
class ScoredShard:
    group: str | None
    key: str
    rows: int
    anomalies: int
    model_family: str
    model_version: str
    model_seconds: float  # time inside the model (the rest of a night is I/O and orchestration)
    backend: str = "torch"  # what scored the shard: "torch" | "onnx"
    note: str | None = None  # why that differs from the configured backend
    scaled_key: str | None = None  # the rows it scored, scaled once (the drift check reads them)


@dataclass(frozen=True)
class ScoredNight:
    """One scope's scores of a night: where they are and what they say (status "missing": no
    input rows)."""

    dataset: str
    date: str
    status: str  # "scored" | "missing"
    rows: int = 0
    anomalies: int = 0
    keys: list[str] = field(default_factory=list)
    model_family: str | None = None
    model_version: str | None = None
    group: str | None = None
    model_seconds: float = 0.0
    backend: str | None = None  # what scored the night: "torch" | "onnx"
    note: str | None = None  # why that differs from the configured backend
    scaled_keys: list[str] = field(default_factory=list)  # the scored rows, scaled by the model

    @property
    def model(self) -> VersionRef | None:
        if self.model_family is None or self.model_version is None:
            return None
        scope = self.dataset if self.group is None else \
            f"{self.dataset}/groups/{scope_slug(self.group)}"
        return VersionRef(scope, self.model_family, self.model_version)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def scores_frame(
    rows: pl.DataFrame, scores: np.ndarray, contrib: np.ndarray, loaded: LoadedModel
) -> pl.DataFrame:
    """The scores layer: one row per input row."""
    # each entity by its own calibrated threshold where it has one (the pooled one otherwise)
    threshold, p = thresholds_by_entity(scores, rows["entity"].to_numpy(), loaded.threshold)
    return rows.select("timestamp", "entity", "label").with_columns(
        pl.Series("score", scores, dtype=pl.Float64),
        pl.Series("p_value", p, dtype=pl.Float64),
        pl.Series("threshold", threshold, dtype=pl.Float64),
        pl.Series("is_anomaly", np.nan_to_num(scores, nan=-np.inf) > threshold),
        pl.lit(loaded.ref.family).alias("model_family"),
        pl.lit(loaded.ref.version).alias("model_version"),
        *(pl.Series(f"{CONTRIB_PREFIX}{f}", contrib[:, i], dtype=pl.Float32)
          for i, f in enumerate(loaded.features)),
    )




def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time())


def scope_part(group: str | None) -> str:
    """A scope's name in part names and in the scores table's `scope` partition."""
    return DATASET_PART if group is None else scope_slug(group)


def shards_of(group: str | None, sizes: dict[str, int], max_rows: int) -> list[Shard]:
    """Consecutive entities packed into shards of at most `max_rows` rows (an entity is never
    split: its windows need its rows together)."""
    stem = scope_part(group)
    shards, members, rows = [], [], 0
    for entity, n in sizes.items():
        if members and rows + n > max_rows:
            shards.append(Shard(group, members, rows, f"{stem}-{len(shards):04d}"))
            members, rows = [], 0
        members.append(entity)
        rows += n
    if members:
        shards.append(Shard(group, members, rows, f"{stem}-{len(shards):04d}"))
    return shards


@task(name="plan-night", cache_policy=NO_CACHE, **IO_RETRIES)
def plan_night(cfg: DatasetConfig, day: date) -> NightPlan:
    """Which model scores each entity that sent rows tonight, cut into bounded shards."""
    store = store_for(cfg)
    start = day_start(day)
    sizes = entity_rows(store, cfg.for_group(None), start, start + timedelta(days=1))
    has_champion: dict[str | None, bool] = {}

    def modelled(group: str | None) -> bool:
        if group not in has_champion:
            has_champion[group] = read_champion(store, cfg.for_group(group).scope_name) is not None
        return has_champion[group]

    assigned: dict[str | None, dict[str, int]] = {}
    fallback, not_modelled = [], []
    for entity, n in sizes.items():
        group = cfg.group_of(entity)
        if group is not None and modelled(group):
            assigned.setdefault(group, {})[entity] = n
        elif (cfg.model.scope == "dataset" or cfg.model.fallback) and modelled(None):
            assigned.setdefault(None, {})[entity] = n
            if cfg.model.scope != "dataset":
                fallback.append(entity)
        else:
            not_modelled.append(entity)
    if fallback or not_modelled:
        run_logger(__name__).warning(
            "%s %s: %d entities without a model of their own (%d scored by the dataset-level "
            "model, %d not scored): %s", cfg.name, day, len(fallback) + len(not_modelled),
            len(fallback), len(not_modelled), (fallback + not_modelled)[:20])
    shards = [s for g, members in assigned.items()
              for s in shards_of(g, members, cfg.runner.shard_rows)]
    return NightPlan(day.isoformat(), sum(sizes.values()), shards, fallback, not_modelled)


def scaled_prefix(cfg: DatasetConfig, day: date) -> str:
    """Where a night's scaled rows wait for the drift check (one part per shard, like scores)."""
    return f"datasets/{cfg.name}/scaled/nightly/date={day.isoformat()}"


def score_night(cfg: DatasetConfig, store: Store, day: date, shard: Shard
                ) -> tuple[VersionScorer, ScoredRows, float]:
    """(the champion that scored, the shard's rows of the night scored by it, seconds in the
    model): tasks.scoring's one path, the context read from the validated layer."""
    scoped = cfg.for_group(shard.group)
    version = version_scorer(cfg, current_champion(store, scoped.scope_name), store)
    start = day_start(day)
    tonight = load_validated(store, scoped, start, start + timedelta(days=1), shard.entities)
    context = validated_context(store, scoped, start, shard.entities, version.loaded.window)
    started = time.perf_counter()
    scored = score_version(version, tonight, context)
    return version, scored, time.perf_counter() - started


@task(name="score-shard", cache_policy=NO_CACHE, **IO_RETRIES)
def score_shard(cfg: DatasetConfig, day: date, shard: Shard) -> ScoredShard:
    """Score one shard's rows of a night with its scope's champion; writes one scores part and
    the scaled rows (so the drift check does not scale the night again)."""
    store = store_for(cfg)
    version, scored, model_seconds = score_night(cfg, store, day, shard)
    out = scores_frame(scored.rows, scored.scores, scored.contributions, version.loaded)
    key = scores_table.stage(store, cfg, day, scope_part(shard.group), shard.part, out)
    scaled_key = f"{scaled_prefix(cfg, day)}/part-{shard.part}.parquet"
    store.write_parquet(scaled_key, scored.rows.select(
        "timestamp", "entity", *version.loaded.features).to_arrow())
    return ScoredShard(shard.group, key, out.height, int(out["is_anomaly"].sum()),
                       version.ref.family, version.ref.version, model_seconds, version.backend,
                       version.note, scaled_key)


@task(name="commit-night", cache_policy=NO_CACHE, **IO_RETRIES)
def commit_night(cfg: DatasetConfig, day: date, shards: list[ScoredShard]) -> list[ScoredNight]:
    """Replace the night in the scores table with this run's shards (one commit: readers see
    the whole night or the previous one), remove scaled parts an earlier run of this night
    left that this run did not write, and sum the shards up per scope."""
    store = store_for(cfg)
    files = scores_table.commit_night(store, cfg, day, [s.key for s in shards])
    written = {s.scaled_key for s in shards}
    for key in store.list(scaled_prefix(cfg, day)):
        if key not in written:
            store.delete(key)
    nights = []
    for group in dict.fromkeys(s.group for s in shards):
        mine = [s for s in shards if s.group == group]
        nights.append(ScoredNight(cfg.name, day.isoformat(), "scored", sum(s.rows for s in mine),
                                  sum(s.anomalies for s in mine),
                                  files.get(scope_part(group), []),
                                  mine[0].model_family, mine[0].model_version, group,
                                  sum(s.model_seconds for s in mine), mine[0].backend,
                                  mine[0].note, [s.scaled_key for s in mine if s.scaled_key]))
        run_logger(__name__).info(
            "%s %s: scored %d rows with %s, %d anomalous, model %s/%s",
            cfg.for_group(group).label, day, nights[-1].rows, nights[-1].backend,
            nights[-1].anomalies, nights[-1].model_family, nights[-1].model_version)
    return nights
