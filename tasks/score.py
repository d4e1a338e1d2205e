"""Scoring: per-row score, per-feature contribution, threshold and verdict, as Parquet.

Row rule (see models/scoring.py): windows of stride 1 over each entity; a row's
contribution from a feature is the mean of the element scores of every window
containing it; the row score is their sum. Nightly scoring loads the day before
as context so the first rows of a day are covered by full windows too.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.base import WindowModel
from models.engine import WindowSet
from models.scoring import row_contributions
from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, compute_device, run_logger, store_for
from tasks.export import OnnxScorer
from tasks.ingest import load_validated
from tasks.model_io import ONNX, LoadedModel, load_model
from tasks.normalise import p_values_from_threshold
from tasks.register import champion_ref, load_version_files, read_champion
from tasks.scale import apply_scaler
from tasks.train import series_tensor
from tasks.window import window_starts

CONTRIB_PREFIX = "contrib__"


def score_rows(
    model: WindowModel | OnnxScorer, scaled: pl.DataFrame, features: list[str], length: int,
    feature_scale: np.ndarray | None = None, batch_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (T,), contributions (T, F)) for a frame sorted by entity, timestamp.

    With `feature_scale` (each feature's mean contribution on normal training rows),
    contributions are in units of that feature's typical training error, so a
    feature that is always hard to reconstruct cannot drown out the others.
    """
    device = model.device if isinstance(model, WindowModel) else torch.device("cpu")
    starts = window_starts(scaled["entity"].rle_id().to_numpy(), length, 1)
    windows = WindowSet(series_tensor(scaled, features, device), torch.from_numpy(starts), length)
    contrib, _ = row_contributions(model, windows, batch_size)
    contrib_np = contrib.cpu().numpy()
    if feature_scale is not None:
        contrib_np = contrib_np / np.asarray(feature_scale, dtype=np.float32)
    return contrib_np.sum(axis=1), contrib_np


def feature_error_scale(contributions: np.ndarray) -> np.ndarray:
    """Mean contribution per feature over (normal training) rows, floored to stay positive."""
    scale = np.nanmean(contributions, axis=0).astype(np.float64)
    floor = max(float(np.nanmean(scale)) * 1e-3, 1e-12)
    return np.maximum(np.nan_to_num(scale, nan=floor), floor)


def scores_frame(
    rows: pl.DataFrame, scores: np.ndarray, contrib: np.ndarray, loaded: LoadedModel
) -> pl.DataFrame:
    """The scores layer: one row per input row (schema in schemas/arrow.py)."""
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


def champion_model(cfg: DatasetConfig) -> LoadedModel:
    store = store_for(cfg)
    pointer = read_champion(store, cfg.name)
    if pointer is None:
        raise LookupError(f"no champion for dataset {cfg.name!r}: run training first")
    return load_model(store, champion_ref(pointer), compute_device(cfg))


def champion_scorer(cfg: DatasetConfig, loaded: LoadedModel) -> WindowModel | OnnxScorer:
    """The torch model, or its verified ONNX graph on ONNX Runtime when the config says so."""
    if cfg.scoring.backend == "torch":
        return loaded.model
    files = load_version_files(store_for(cfg), loaded.ref, [ONNX])  # sha256-checked
    return OnnxScorer(files[ONNX])


def scores_key(cfg: DatasetConfig, day: date) -> str:
    return f"scores/{cfg.name}/date={day.isoformat()}/scores.parquet"


@task(name="score-day", cache_policy=NO_CACHE, **IO_RETRIES)
def score_day(cfg: DatasetConfig, day: date) -> dict[str, object]:
    """Score one day's validated rows with the champion; replaces that day's partition."""
    log = run_logger(__name__)
    store = store_for(cfg)
    start = datetime.combine(day, datetime.min.time())
    frame = load_validated(store, cfg, start - timedelta(days=1), start + timedelta(days=1))
    today = frame["timestamp"] >= start
    if not today.any():
        log.warning("no validated rows for %s on %s: nothing scored", cfg.name, day)
        return {"date": day.isoformat(), "status": "missing", "rows": 0, "anomalies": 0}
    loaded = champion_model(cfg)
    scorer = champion_scorer(cfg, loaded)
    scores, contrib = score_rows(scorer, apply_scaler(frame, loaded.scaler),
                                 loaded.features, loaded.window,
                                 loaded.threshold.get("feature_scale"))
    out = scores_frame(frame, scores, contrib, loaded).filter(today)
    key = scores_key(cfg, day)
    store.write_parquet(key, out.to_arrow())
    anomalies = int(out["is_anomaly"].sum())
    log.info("%s %s: scored %d rows, %d anomalous, model %s/%s -> %s", cfg.name, day,
             out.height, anomalies, loaded.ref.family, loaded.ref.version, store.uri(key))
    return {"date": day.isoformat(), "status": "scored", "rows": out.height,
            "anomalies": anomalies, "key": key, "model_version": loaded.ref.version}
