"""Training stage: one family on the prepared windows, checkpointed every epoch.

The candidate's files land under models/<ds>/_runs/<run_id>/<family>/ (a
scratch area); only registration turns them into an immutable version. A
killed run restarted with the same run id resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import time

import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.engine import (
    Checkpoint,
    EngineSettings,
    WindowSet,
    checkpoint_metadata_from_json,
    checkpoint_metadata_json,
    fit,
)
from models.registry import build_model
from schemas.config import DatasetConfig, FamilyConfig
from tasks.common import compute_device, run_logger, store_for
from tasks.model_io import weights_bytes
from tasks.prepare import PreparedData, load_prepared
from tasks.store import Store, json_bytes

CHECKPOINT = "checkpoint.safetensors"


def candidate_key(cfg: DatasetConfig, run_id: str, family: str) -> str:
    return f"models/{cfg.name}/_runs/{run_id}/{family}"


def series_tensor(scaled: pl.DataFrame, features: list[str], device: torch.device) -> torch.Tensor:
    """The whole scaled series as one (T, F) float32 tensor on the device."""
    return torch.from_numpy(scaled.select(features).to_numpy().astype("float32")).to(device)


def training_starts(index: pl.DataFrame, normal_only: bool) -> torch.Tensor:
    """Start rows of windows lying wholly in the train split (and label-free if asked)."""
    keep = pl.col("split") == "train"
    if normal_only:
        keep &= pl.col("label") == 0
    return torch.tensor(index.filter(keep)["start_row"].to_numpy(), dtype=torch.long)


def engine_settings(cfg: DatasetConfig, family: FamilyConfig) -> EngineSettings:
    t = cfg.training_for(family)
    return EngineSettings(
        epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
        patience=t.patience, holdout_fraction=t.holdout_fraction, seed=t.seed, device=t.device,
        amp=t.amp, compile=t.compile, max_train_windows=t.max_train_windows,
    )


def _read_checkpoint(store: Store, key: str) -> Checkpoint | None:
    if not store.exists(key):
        return None
    data = store.read_bytes(key)
    return load_safetensors(data), checkpoint_metadata_from_json(safetensors_metadata(data))


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (format: u64 header length, JSON header)."""
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {})


@task(name="train", tags=["gpu"], cache_policy=NO_CACHE)
def train_family(cfg: DatasetConfig, family: FamilyConfig, prepared: PreparedData, run_id: str) -> str:
    """Train one family; returns the key of its candidate folder (weights + fit.json)."""
    log = run_logger(__name__)
    store = store_for(cfg)
    settings = engine_settings(cfg, family)
    device = compute_device(cfg, settings.device)
    scaled, index, _ = load_prepared(cfg, prepared)
    features = cfg.columns.features
    windows = WindowSet(
        series_tensor(scaled, features, device),
        training_starts(index, cfg.splits.train_on_normal_only),
        cfg.window.length,
    )
    torch.manual_seed(settings.seed)  # the initial weights too are part of a reproducible run
    model = build_model(family.name, len(features), cfg.window.length, family.params).to(device)
    key = candidate_key(cfg, run_id, family.name)
    resume = _read_checkpoint(store, f"{key}/{CHECKPOINT}")
    if resume is not None:
        log.info("%s: resuming from the checkpoint of epoch %d", family.name, resume[1]["epoch"] + 1)

    def save_checkpoint(epoch: int, checkpoint: Checkpoint) -> None:
        tensors, meta = checkpoint
        store.write_bytes(f"{key}/{CHECKPOINT}",
                          save_safetensors(tensors, metadata=checkpoint_metadata_json(meta)))

    started = time.time()
    result = fit(model, windows, settings, on_epoch_end=save_checkpoint, resume=resume,
                 progress=log.info)
    store.write_bytes(f"{key}/weights.safetensors", weights_bytes(model))
    fit_info = {
        "family": family.name,
        "arguments": model.arguments(),
        "settings": settings.__dict__,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_holdout": result.best_holdout,
        "epochs_run": result.epochs_run,
        "train_windows": result.train_windows,
        "fit_seconds": result.seconds,
        "samples_per_s": result.samples_per_s,
        "device": result.device,
        "resumed_from_epoch": result.resumed_from_epoch,
        "wall_seconds": time.time() - started,
    }
    store.write_bytes(f"{key}/fit.json", json_bytes(fit_info))
    log.info("%s: %d epochs on %s, %.0f windows/s, best holdout %.5f (epoch %d)", family.name,
             result.epochs_run, result.device, result.samples_per_s, result.best_holdout,
             result.best_epoch + 1)
    return key


def read_fit_info(store: Store, key: str) -> dict:
    return json.loads(store.read_bytes(f"{key}/fit.json"))
