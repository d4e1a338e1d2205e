"""Nightly scoring: the champion scores one day into scores/<ds>/date=…/scores.parquet.

Per row: score, per-feature contribution, p-value, threshold, verdict and the
model version (schema in README). Nightly scoring loads the day before as
window context, so the first rows of a day are covered by full windows too.
A rerun of the night replaces its partition.

Backend (`[scoring] backend`): "torch" runs the champion's torch model; "onnx" runs
its verified model.onnx on ONNX Runtime through the numpy row mapping, with no
torch imported (a `scoring` install has none). A champion without a graph is then
scored with torch if torch is installed, and the night says so (`ScoredNight.note`);
without torch the night fails with the version and the reason its export was refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, compute_device, run_logger, store_for
from tasks.data.ingest import load_validated
from tasks.data.scale import apply_scaler
from tasks.evaluation.normalise import p_values_from_threshold
from tasks.scoring import CONTRIB_PREFIX, OnnxScorer, score_rows
from tasks.store import Store
from tasks.versions import (
    ONNX,
    LoadedModel,
    VersionRef,
    current_champion,
    export_outcome,
    has_file,
    load_model,
    load_version_files,
)

if TYPE_CHECKING:
    from models.base import WindowModel


class ScoringBackendError(RuntimeError):
    """The champion cannot be scored here: no graph for "onnx" and no torch to fall back on,
    or backend "torch" on an install without torch."""


@dataclass(frozen=True)
class ScoredNight:
    """Where a night's scores are and what they say (status "missing": no input rows)."""

    dataset: str
    date: str
    status: str  # "scored" | "missing"
    rows: int = 0
    anomalies: int = 0
    key: str | None = None
    model_family: str | None = None
    model_version: str | None = None
    backend: str | None = None  # what scored the night: "torch" | "onnx"
    note: str | None = None  # why that differs from the configured backend

    @property
    def model(self) -> VersionRef | None:
        if self.model_family is None or self.model_version is None:
            return None
        return VersionRef(self.dataset, self.model_family, self.model_version)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def scores_frame(
    rows: pl.DataFrame, scores: np.ndarray, contrib: np.ndarray, loaded: LoadedModel
) -> pl.DataFrame:
    """The scores layer: one row per input row."""
    threshold = float(loaded.threshold["threshold"])
    return rows.select("timestamp", "entity", "label").with_columns(
        pl.Series("score", scores, dtype=pl.Float64),
        pl.Series("p_value", p_values_from_threshold(scores, loaded.threshold), dtype=pl.Float64),
        pl.lit(threshold, dtype=pl.Float64).alias("threshold"),
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
    scorer: WindowModel | OnnxScorer
    backend: str
    note: str | None = None


def champion_scorer(cfg: DatasetConfig, store: Store, ref: VersionRef) -> ChampionScorer:
    """The torch model, or its verified ONNX graph on ONNX Runtime when the config says so
    (falling back to torch, said aloud, when the version has no graph)."""
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


def scores_key(cfg: DatasetConfig, day: date) -> str:
    return f"scores/{cfg.name}/date={day.isoformat()}/scores.parquet"


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time())


@task(name="score-day", cache_policy=NO_CACHE, **IO_RETRIES)
def score_day(cfg: DatasetConfig, day: date) -> ScoredNight:
    """Score one day's validated rows with the champion; replaces that day's partition."""
    log = run_logger(__name__)
    store = store_for(cfg)
    start = day_start(day)
    frame = load_validated(store, cfg, start - timedelta(days=1), start + timedelta(days=1))
    today = frame["timestamp"] >= start
    if not today.any():
        log.warning("no validated rows for %s on %s: nothing scored", cfg.name, day)
        return ScoredNight(cfg.name, day.isoformat(), "missing")
    champion = champion_scorer(cfg, store, current_champion(store, cfg.name))
    loaded = champion.loaded
    scores, contrib = score_rows(champion.scorer, apply_scaler(frame, loaded.scaler),
                                 loaded.features, loaded.window, loaded.feature_scale)
    out = scores_frame(frame, scores, contrib, loaded).filter(today)
    key = scores_key(cfg, day)
    store.write_parquet(key, out.to_arrow())
    anomalies = int(out["is_anomaly"].sum())
    log.info("%s %s: scored %d rows with %s, %d anomalous, model %s/%s -> %s", cfg.name, day,
             out.height, champion.backend, anomalies, loaded.ref.family, loaded.ref.version,
             store.uri(key))
    return ScoredNight(cfg.name, day.isoformat(), "scored", out.height, anomalies, key,
                       loaded.ref.family, loaded.ref.version, champion.backend, champion.note)
