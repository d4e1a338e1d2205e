"""Training stage: fit one family on the prepared windows, then score the prepared rows once.

Everything that needs the model on the data happens here, while the series is
resident on the device: the fit (checkpointed every epoch), the row scores of
every train and validation row (so calibration, drift reference and reports
read a small Parquet file instead of scoring again), latent means for families that have them,
and the export check's probe of real validation rows (tasks.training.probe).

The candidate's files land under models/<ds>/_runs/<run_id>/<family>/ (a
scratch area); only registration turns them into an immutable version. A
killed run restarted with the same run id resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.base import WindowModel
from models.engine import (
    Checkpoint,
    EngineSettings,
    EpochProgress,
    FitResult,
    WindowSet,
    checkpoint_metadata_from_json,
    checkpoint_metadata_json,
    fit,
)
from models.registry import build_model
from schemas.config import DatasetConfig, FamilyConfig, RowRule
from tasks.common import compute_device, process_lock, run_logger, store_for
from tasks.data.prepare import PreparedData, load_prepared
from tasks.scoring import feature_error_scale, normalised, raw_contributions, series_tensor
from tasks.store import Store, json_bytes
from tasks.training.probe import PROBE, select_probe
from tasks.training.progress import FamilyProgress
from tasks.versions import WEIGHTS, weights_bytes

CHECKPOINT = "checkpoint.safetensors"
FIT = "fit.json"
ROW_SCORES = "row_scores.parquet"
LATENTS = "latents.parquet"
MAX_LATENT_WINDOWS = 2000

TORCH_RNG = "torch-rng"
"""torch's random generator is process-global (initial weights, dropout, VAE sampling), so two
trainings in threads of one process would interleave their draws and their results would
depend on timing. Trainings in one process take turns (`process_lock(TORCH_RNG)`); Dask
worker processes train in parallel, and the same run gives the same weights on either runner."""


@dataclass(frozen=True)
class TrainedCandidate:
    """A fitted family in its scratch folder (`key`), with what the later stages need to know.
    `feature_scale` (each feature's mean contribution on normal training rows, under the
    row rule) is handed on here, computed once: calibration writes it into the version's
    threshold.json, where scoring reads it."""

    dataset: str
    family: str
    key: str
    epochs_run: int
    fit_seconds: float
    device: str
    feature_scale: list[float] | None = None

    def file(self, name: str) -> str:
        return f"{self.key}/{name}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def candidate_key(cfg: DatasetConfig, run_id: str, family: str) -> str:
    return f"models/{cfg.scope_name}/_runs/{run_id}/{family}"


def training_starts(index: pl.DataFrame, normal_only: bool) -> torch.Tensor:
    """Start rows of windows lying wholly in the train split (and label-free if asked)."""
    keep = pl.col("split") == "train"
    if normal_only:
        keep &= pl.col("label") == 0
    return torch.tensor(index.filter(keep)["start_row"].to_numpy(), dtype=torch.long)


def engine_settings(cfg: DatasetConfig, family: FamilyConfig) -> EngineSettings:
    """The dataset's `[training]` with the family's overrides: what the engine's loop runs."""
    return cfg.training_for(family)


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (format: u64 header length, JSON header)."""
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {})


def _read_checkpoint(store: Store, key: str) -> Checkpoint | None:
    if not store.exists(key):
        return None
    data = store.read_bytes(key)
    return load_safetensors(data), checkpoint_metadata_from_json(safetensors_metadata(data))


def _fit(store: Store, key: str, model: WindowModel, windows: WindowSet,
         settings: EngineSettings, progress: FamilyProgress) -> FitResult:
    """The engine's fit with a checkpoint per epoch under `key`, resuming from the last one;
    each epoch goes to the log and to the family's progress artifact."""
    log = run_logger(__name__)
    resume = _read_checkpoint(store, f"{key}/{CHECKPOINT}")
    if resume is not None:
        log.info("%s: resuming from the checkpoint of epoch %d", model.name, resume[1]["epoch"] + 1)

    def save_checkpoint(epoch: int, checkpoint: Checkpoint) -> None:
        tensors, meta = checkpoint
        store.write_bytes(f"{key}/{CHECKPOINT}",
                          save_safetensors(tensors, metadata=checkpoint_metadata_json(meta)))

    def report(epoch: EpochProgress) -> None:
        log.info("%s", epoch)
        progress.epoch(epoch)

    return fit(model, windows, settings, on_epoch_end=save_checkpoint, resume=resume,
               progress=report)


def row_scores(model: WindowModel, scaled: pl.DataFrame, features: list[str], length: int,
               rule: RowRule) -> tuple[pl.DataFrame, np.ndarray]:
    """(every prepared row with its score under the row `rule`, the per-feature scale fitted
    on normal train rows under the same rule)."""
    raw = raw_contributions(model, scaled, features, length, rule=rule)
    train = (scaled["split"] == "train").to_numpy() & (scaled["label"] == 0).to_numpy()
    scale = feature_error_scale(raw[train])
    scores, _ = normalised(raw, scale)
    frame = scaled.select("timestamp", "entity", "split", "label").with_columns(
        pl.Series("score", scores, dtype=pl.Float64))
    return frame, scale


@torch.no_grad()
def latents(model: WindowModel, series: torch.Tensor, index: pl.DataFrame, length: int,
            n: int = MAX_LATENT_WINDOWS) -> pl.DataFrame:
    """Latent means of up to `n` evenly spaced validation windows, with their labels."""
    rows = index.filter(pl.col("split") == "validation")
    rows = rows.gather_every(rows.height // n + 1) if rows.height > n else rows
    windows = WindowSet(series, torch.from_numpy(rows["start_row"].to_numpy()), length)
    parts = [model.latent_means(windows.batch(torch.arange(i, min(i + 1024, len(windows)))))
             for i in range(0, len(windows), 1024)]
    z = torch.cat(parts).float().cpu().numpy() if parts else np.zeros((0, 1), np.float32)
    return pl.DataFrame({"label": rows["label"], **{f"z{i}": z[:, i] for i in range(z.shape[1])}})


@task(name="train", tags=["gpu"], cache_policy=NO_CACHE)
def train_family(cfg: DatasetConfig, family: FamilyConfig, prepared: PreparedData,
                 run_id: str) -> TrainedCandidate:
    """Fit one family, then score its prepared rows once; files go to the candidate folder."""
    log = run_logger(__name__)
    store = store_for(cfg)
    settings = engine_settings(cfg, family)
    device = compute_device(cfg, settings.device)
    scaled, index, _ = load_prepared(cfg, prepared)
    features, length = cfg.columns.features, cfg.window.length
    series = series_tensor(scaled, features, device)
    windows = WindowSet(series, training_starts(index, cfg.splits.train_on_normal_only), length)
    key = candidate_key(cfg, run_id, family.name)
    started = time.time()
    progress = FamilyProgress(cfg, family.name, settings.epochs)
    with process_lock(TORCH_RNG):
        torch.manual_seed(settings.seed)  # the initial weights too are part of a reproducible run
        model = build_model(family.name, len(features), length, family.params).to(device)
        try:
            result = _fit(store, key, model, windows, settings, progress)
        except BaseException as err:
            progress.failed(err)
            raise
        progress.done(result)
        model.eval()
        scores, scale = row_scores(model, scaled, features, length, cfg.window.row_rule)
    store.write_bytes(f"{key}/{WEIGHTS}", weights_bytes(model))
    store.write_parquet(f"{key}/{ROW_SCORES}", scores.to_arrow())
    probe = select_probe(scaled, scores["score"].to_numpy(), features, length)
    if probe is not None:
        store.write_bytes(f"{key}/{PROBE}", probe.to_bytes())
    if hasattr(model, "latent_means"):  # latent means, not samples: no RNG involved
        store.write_parquet(f"{key}/{LATENTS}", latents(model, series, index, length).to_arrow())
    store.write_bytes(f"{key}/{FIT}", json_bytes({
        "family": family.name, "arguments": model.arguments(), "settings": settings.model_dump(exclude={"cpu_threads"}),
        "history": result.history, "best_epoch": result.best_epoch,
        "best_holdout": result.best_holdout, "epochs_run": result.epochs_run,
        "train_windows": result.train_windows, "fit_seconds": result.seconds,
        "samples_per_s": result.samples_per_s, "device": result.device,
        "resumed_from_epoch": result.resumed_from_epoch, "wall_seconds": time.time() - started,
        "row_rule": cfg.window.row_rule,
    }))
    log.info("%s %s: %d epochs on %s, %.0f windows/s, best holdout %.5f (epoch %d)", cfg.label,
             family.name,
             result.epochs_run, result.device, result.samples_per_s, result.best_holdout,
             result.best_epoch + 1)
    return TrainedCandidate(cfg.name, family.name, key, result.epochs_run, result.seconds,
                            result.device, scale.tolist())
