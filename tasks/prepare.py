"""Scale and window a dataset for training: scaled Parquet, scaler JSON, window index Parquet."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig, SplitsConfig
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.ingest import load_validated
from tasks.scale import ScalerParams, apply_scaler, fit_scaler
from tasks.window import build_window_index


@dataclass(frozen=True)
class PreparedData:
    """Store keys of one prepared training dataset (passed between tasks, not the data)."""

    scaled_key: str
    scaler_key: str
    windows_key: str
    rows: int
    windows: int

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def assign_splits(frame: pl.DataFrame, splits: SplitsConfig, with_score: bool = True) -> pl.DataFrame:
    """Tag each row train / validation / score / none by its timestamp."""
    ts = pl.col("timestamp")
    expr = pl.when((ts >= splits.train.start) & (ts < splits.train.end)).then(pl.lit("train"))
    for r in splits.validation:
        expr = expr.when((ts >= r.start) & (ts < r.end)).then(pl.lit("validation"))
    if with_score and splits.score is not None:
        expr = expr.when((ts >= splits.score.start) & (ts < splits.score.end)).then(pl.lit("score"))
    return frame.with_columns(expr.otherwise(pl.lit("none")).alias("split"))


def training_range(splits: SplitsConfig) -> tuple:
    starts = [splits.train.start, *(r.start for r in splits.validation)]
    ends = [splits.train.end, *(r.end for r in splits.validation)]
    return min(starts), max(ends)


@task(name="scale", cache_policy=NO_CACHE, **IO_RETRIES)
def scale_dataset(cfg: DatasetConfig) -> tuple[str, str, int]:
    """Fit the scaler on train rows only; write scaled rows (train + validation) as Parquet."""
    store = store_for(cfg)
    start, end = training_range(cfg.splits)
    frame = assign_splits(load_validated(store, cfg, start, end), cfg.splits, with_score=False)
    train = frame.filter(pl.col("split") == "train")
    scaler = fit_scaler(train, cfg.columns.features, cfg.scaling.method)
    scaler_json = scaler.to_json()
    scaler_id = hashlib.sha256(json.dumps(scaler_json, sort_keys=True).encode()).hexdigest()[:12]
    prefix = f"datasets/{cfg.name}/scaled/{scaler_id}"
    store.write_json(f"{prefix}/scaler.json", scaler_json)
    store.write_parquet(f"{prefix}/scaled.parquet", apply_scaler(frame, scaler).to_arrow())
    run_logger(__name__).info(
        "scaled %d rows (%d train) with %s scaler %s", frame.height, train.height,
        cfg.scaling.method, scaler_id,
    )
    return f"{prefix}/scaled.parquet", f"{prefix}/scaler.json", frame.height


@task(name="window", cache_policy=NO_CACHE, **IO_RETRIES)
def window_dataset(cfg: DatasetConfig, scaled_key: str) -> tuple[str, int]:
    """Write the window index (not the windows) next to the scaled rows."""
    store = store_for(cfg)
    scaled = pl.from_arrow(store.read_parquet(scaled_key))
    index = build_window_index(scaled, cfg.window.length, cfg.window.stride)
    scaler_id = scaled_key.split("/")[-2]
    key = (f"datasets/{cfg.name}/windows/{scaler_id}/"
           f"L{cfg.window.length}-S{cfg.window.stride}.parquet")
    store.write_parquet(key, index.to_arrow())
    counts = dict(index.group_by("split").len().iter_rows())
    run_logger(__name__).info("window index %s: %s", key, counts)
    return key, index.height


def load_prepared(cfg: DatasetConfig, prepared: PreparedData) -> tuple[pl.DataFrame, pl.DataFrame, ScalerParams]:
    store = store_for(cfg)
    scaled = pl.from_arrow(store.read_parquet(prepared.scaled_key))
    index = pl.from_arrow(store.read_parquet(prepared.windows_key))
    scaler = ScalerParams.from_json(store.read_json(prepared.scaler_key))
    return scaled, index, scaler
