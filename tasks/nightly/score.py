"""Nightly scoring: each entity's champion scores one day into scores/<ds>/date=…/part-*.parquet.

A night is planned first (`plan_night`): which entities sent rows, which model scores each
(its entity's or group's champion; the dataset-level fallback for entities without one;
none: reported as not modelled, never silently dropped), cut into shards of bounded rows
so memory stays flat however large the fleet. Each shard is one task that writes one
Parquet part. Per row: score, per-feature contribution, p-value, threshold, verdict and
the model version (schema in README). Windows need the rows before midnight: a shard
reads the last `window - 1` rows of each entity's previous day as context. A rerun of the
night replaces its parts (`commit_night` removes parts this run did not write).

Backend (`[scoring] backend`): "torch" runs the champion's torch model; "onnx" runs
its verified model.onnx on ONNX Runtime through the numpy row mapping, with no
torch imported (a `scoring` install has none). A champion without a graph is then
scored with torch if torch is installed, and the night says so (`ScoredNight.note`);
without torch the night fails with the version and the reason its export was refused.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig, scope_slug
from tasks.common import IO_RETRIES, compute_device, run_logger, store_for
from tasks.data.ingest import entity_rows, load_validated
from tasks.data.scale import apply_scaler
from tasks.evaluation.ensemble import row_combiner
from tasks.evaluation.normalise import thresholds_by_entity
from tasks.scoring import CONTRIB_PREFIX, EnsembleMember, EnsembleScorer, OnnxScorer, score_rows
from tasks.store import Store
from tasks.versions import (
    ENSEMBLE,
    ONNX,
    LoadedModel,
    VersionRef,
    current_champion,
    export_outcome,
    has_file,
    load_model,
    load_version_files,
    read_champion,
)

if TYPE_CHECKING:
    from models.base import WindowModel


class ScoringBackendError(RuntimeError):
    """The champion cannot be scored here: no graph for "onnx" and no torch to fall back on,
    or backend "torch" on an install without torch."""

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


@dataclass
class ChampionScorer:
    """The loaded champion, what scores it, and a note when that is not the configured backend."""

    loaded: LoadedModel
    scorer: WindowModel | OnnxScorer | EnsembleScorer
    backend: str
    note: str | None = None


def champion_scorer(cfg: DatasetConfig, store: Store, ref: VersionRef) -> ChampionScorer:
    """The torch model, or its verified ONNX graph on ONNX Runtime when the config says so
    (falling back to torch, said aloud, when the version has no graph). An ensemble gets
    one scorer per verified member, each chosen by the same rule."""
    if ref.family == ENSEMBLE:
        return ensemble_scorer(cfg, store, ref)
    note = None
    if cfg.scoring.backend == "onnx":
        if has_file(store, ref, ONNX):
            graph = load_version_files(store, ref, [ONNX])[ONNX]  # sha256-checked
            return ChampionScorer(load_model(store, ref, None),
                                  OnnxScorer(graph, cfg.scoring.threads), "onnx")
        why = refused_export_reason(store, ref)
        if not torch_installed():
            raise ScoringBackendError(
                f"{cfg.name}: [scoring] backend is 'onnx' but champion {ref.family}/{ref.version} "
                f"has no model.onnx ({why}), and torch is not installed to score it otherwise; "
                f"install the training set (pip install 'nightowl[train]') or promote a version "
                f"with a verified graph")
        note = (f"backend 'onnx' configured, but {ref.family}/{ref.version} has no model.onnx "
                f"({why}): scored with torch")
        run_logger(__name__).warning("%s: %s", cfg.name, note)
    elif not torch_installed():
        raise ScoringBackendError(
            f"{cfg.name}: [scoring] backend is 'torch' but torch is not installed (a scoring "
            f"install); set [scoring] backend = 'onnx' to score {ref.family}/{ref.version} "
            f"through its model.onnx")
    loaded = load_model(store, ref, compute_device(cfg))
    return ChampionScorer(loaded, loaded.model, "torch", note)


def ensemble_scorer(cfg: DatasetConfig, store: Store, ref: VersionRef) -> ChampionScorer:
    """The ensemble (members checked against its recorded manifest hashes) and a scorer per
    member; the backend is "onnx" only when every member runs on its graph."""
    loaded = load_model(store, ref, None)  # verifies the members' manifests, builds no model
    parts = [(champion_scorer(cfg, store, member.ref), weight) for member, weight in loaded.members]
    scorer = EnsembleScorer([EnsembleMember(p.scorer, p.loaded.feature_scale, w, p.loaded.row_rule)
                             for p, w in parts], row_combiner(loaded.config["ensemble"]))
    backends = {p.backend for p, _ in parts}
    notes = [f"{p.loaded.ref.family}: {p.note}" for p, _ in parts if p.note]
    return ChampionScorer(loaded, scorer, "onnx" if backends == {"onnx"} else "torch",
                          "; ".join(notes) or None)


def torch_installed() -> bool:
    """Whether torch can be imported here (a `scoring` install has none)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def refused_export_reason(store: Store, ref: VersionRef) -> str:
    """Why a version has no graph, from its metrics.json `export` section."""
    outcome = export_outcome(store, ref)
    if outcome is None:
        return "no export was recorded for this version"
    return f"export refused: {outcome.get('reason') or 'no reason recorded'}"


def scores_prefix(cfg: DatasetConfig, day: date) -> str:
    """The night's partition of the scores layer (one Parquet part per shard)."""
    return f"scores/{cfg.name}/date={day.isoformat()}"


def part_key(cfg: DatasetConfig, day: date, part: str) -> str:
    return f"{scores_prefix(cfg, day)}/part-{part}.parquet"


def read_scores(store: Store, cfg: DatasetConfig, day: date) -> pl.DataFrame:
    """A night's scores (every part), sorted by entity and timestamp."""
    keys = [k for k in store.list(scores_prefix(cfg, day)) if k.endswith(".parquet")]
    if not keys:
        return pl.DataFrame()
    return pl.concat([pl.from_arrow(store.read_parquet(k)) for k in keys],
                     how="diagonal_relaxed").sort("entity", "timestamp")


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time())


def shards_of(group: str | None, sizes: dict[str, int], max_rows: int) -> list[Shard]:
    """Consecutive entities packed into shards of at most `max_rows` rows (an entity is never
    split: its windows need its rows together)."""
    stem = DATASET_PART if group is None else scope_slug(group)
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


def with_context(today: pl.DataFrame, before: pl.DataFrame, window: int) -> pl.DataFrame:
    """Tonight's rows after the last `window - 1` rows of each entity's previous day."""
    tail = before.group_by("entity", maintain_order=True).tail(max(window - 1, 0))
    return pl.concat([tail.select(today.columns), today]).sort("entity", "timestamp")


@task(name="score-shard", cache_policy=NO_CACHE, **IO_RETRIES)
def score_shard(cfg: DatasetConfig, day: date, shard: Shard) -> ScoredShard:
    """Score one shard's rows of a night with its scope's champion; writes one part."""
    store = store_for(cfg)
    scoped = cfg.for_group(shard.group)
    champion = champion_scorer(cfg, store, current_champion(store, scoped.scope_name))
    loaded = champion.loaded
    start = day_start(day)
    today = load_validated(store, scoped, start, start + timedelta(days=1), shard.entities)
    before = load_validated(store, scoped, start - timedelta(days=1), start, shard.entities)
    frame = apply_scaler(with_context(today, before, loaded.window), loaded.scaler)
    started = time.perf_counter()
    scores, contrib = score_rows(champion.scorer, frame, loaded.features, loaded.window,
                                 loaded.feature_scale, rule=loaded.row_rule)
    model_seconds = time.perf_counter() - started
    out = scores_frame(frame, scores, contrib, loaded).filter(pl.col("timestamp") >= start)
    key = part_key(cfg, day, shard.part)
    store.write_parquet(key, out.to_arrow())
    return ScoredShard(shard.group, key, out.height, int(out["is_anomaly"].sum()),
                       loaded.ref.family, loaded.ref.version, model_seconds, champion.backend,
                       champion.note)


@task(name="commit-night", cache_policy=NO_CACHE, **IO_RETRIES)
def commit_night(cfg: DatasetConfig, day: date, shards: list[ScoredShard]) -> list[ScoredNight]:
    """Remove parts an earlier run of this night left that this run did not write (a rerun
    replaces the partition), and sum the shards up per scope."""
    store = store_for(cfg)
    written = {s.key for s in shards}
    for key in store.list(scores_prefix(cfg, day)):
        if key not in written:
            store.delete(key)
    nights = []
    for group in dict.fromkeys(s.group for s in shards):
        mine = [s for s in shards if s.group == group]
        nights.append(ScoredNight(cfg.name, day.isoformat(), "scored", sum(s.rows for s in mine),
                                  sum(s.anomalies for s in mine), [s.key for s in mine],
                                  mine[0].model_family, mine[0].model_version, group,
                                  sum(s.model_seconds for s in mine), mine[0].backend,
                                  mine[0].note))
        run_logger(__name__).info(
            "%s %s: scored %d rows with %s, %d anomalous, model %s/%s",
            cfg.for_group(group).label, day, nights[-1].rows, nights[-1].backend,
            nights[-1].anomalies, nights[-1].model_family, nights[-1].model_version)
    return nights
