"""Nightly scoring: the champion scores one day into scores/<ds>/date=…/scores.parquet.

Per row: score, per-feature contribution, p-value, threshold, verdict and the
model version (schema in README). Nightly scoring loads the day before as
window context, so the first rows of a day are covered by full windows too.
A rerun of the night replaces its partition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, compute_device, run_logger, store_for
from tasks.data.ingest import load_validated
from tasks.data.scale import apply_scaler
from tasks.evaluation.normalise import p_values_from_threshold
from tasks.scoring import CONTRIB_PREFIX, OnnxScorer, Scorer, score_rows
from tasks.versions import ONNX, LoadedModel, VersionRef, load_champion, load_version_files


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


def champion_scorer(cfg: DatasetConfig, loaded: LoadedModel) -> Scorer:
    """The torch model, or its verified ONNX graph on ONNX Runtime when the config says so."""
    if cfg.scoring.backend == "torch":
        return loaded.model
    files = load_version_files(store_for(cfg), loaded.ref, [ONNX])  # sha256-checked
    return OnnxScorer(files[ONNX])


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
    loaded = load_champion(store, cfg.name, compute_device(cfg))
    scores, contrib = score_rows(champion_scorer(cfg, loaded), apply_scaler(frame, loaded.scaler),
                                 loaded.features, loaded.window, loaded.feature_scale)
    out = scores_frame(frame, scores, contrib, loaded).filter(today)
    key = scores_key(cfg, day)
    store.write_parquet(key, out.to_arrow())
    anomalies = int(out["is_anomaly"].sum())
    log.info("%s %s: scored %d rows, %d anomalous, model %s/%s -> %s", cfg.name, day,
             out.height, anomalies, loaded.ref.family, loaded.ref.version, store.uri(key))
    return ScoredNight(cfg.name, day.isoformat(), "scored", out.height, anomalies, key,
                       loaded.ref.family, loaded.ref.version)
