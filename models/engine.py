"""The one training engine every torch family shares.

Why it looks like this: the chapter's loop pulls each sample through a
Dataset/DataLoader in Python and is dominated by that overhead. Here the whole
series lives on the device once, windows are a zero-copy `unfold` view of it,
and a batch is one gather of shuffled window starts. Families supply a loss
(or a whole step, for adversarial training); the engine owns the loop, early
stopping on a held-out loss, checkpoints and resume, AMP and seeding.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from models.base import WindowModel
from schemas.config import TrainingConfig

log = logging.getLogger(__name__)


EngineSettings = TrainingConfig
"""The loop's settings are the user's `[training]` section itself (one source: its fields,
defaults and bounds are defined once, in schemas/config.py); `cpu_threads` is applied by the
caller, not the loop."""


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else the CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class WindowSet:
    """Windows of length L over a device-resident series, addressed by start row.

    `series` is (T, F); `starts` holds the first row of each window. No window is
    materialised until a batch gathers it.
    """

    def __init__(self, series: torch.Tensor, starts: torch.Tensor, length: int) -> None:
        if series.ndim != 2:
            raise ValueError(f"series must be (T, F), got {tuple(series.shape)}")
        if len(starts) and int(starts.max()) + length > series.shape[0]:
            raise ValueError("a window runs past the end of the series")
        self.series = series
        self.starts = starts.to(series.device, torch.long)
        self.length = length
        self._view = series.unfold(0, length, 1).transpose(1, 2)  # (T-L+1, L, F), a view

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def n_features(self) -> int:
        return self.series.shape[1]

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """(B, L, F) windows for positions `index` into `starts`."""
        return self._view[self.starts[index]]

    def subset(self, index: torch.Tensor) -> WindowSet:
        return WindowSet(self.series, self.starts[index.to(self.starts.device)], self.length)


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_holdout: float = math.inf
    epochs_run: int = 0
    train_windows: int = 0
    seconds: float = 0.0
    samples_per_s: float = 0.0
    device: str = "cpu"
    resumed_from_epoch: int | None = None


@dataclass(frozen=True)
class EpochProgress:
    """One finished epoch, as `fit` reports it to its `progress` callback (str: a log line)."""

    model: str
    epoch: int  # 0-based
    epochs: int
    train_loss: float
    holdout_loss: float
    best_epoch: int
    best_holdout: float
    elapsed_s: float
    eta_s: float  # an upper bound: early stopping may end sooner

    @property
    def percent(self) -> float:
        return 100.0 * (self.epoch + 1) / self.epochs

    def __str__(self) -> str:
        return (f"{self.model}: epoch {self.epoch + 1}/{self.epochs} "
                f"holdout={self.holdout_loss:.5f} elapsed={self.elapsed_s:.1f}s "
                f"eta<={self.eta_s:.1f}s")


# A checkpoint is (tensors, metadata): tensors go to safetensors, metadata to JSON.
Checkpoint = tuple[dict[str, torch.Tensor], dict[str, Any]]
EpochHook = Callable[[int, Checkpoint], None]


def fit(
    model: WindowModel,
    windows: WindowSet,
    settings: EngineSettings,
    on_epoch_end: EpochHook | None = None,
    resume: Checkpoint | None = None,
    progress: Callable[[EpochProgress], None] | None = None,
) -> FitResult:
    """Train `model` on `windows`; returns history and keeps the best holdout weights."""
    torch.set_flush_denormal(True)  # denormals slow CPU training 5-20x (stack-notes)
    device = windows.series.device
    gen = seed_everything(settings.seed)
    model.to(device)
    train_idx, hold_idx = _split(len(windows), settings, gen)
    if not model.trainable:
        return _fit_direct(model, windows, train_idx, hold_idx, settings)
    optimizers = model.configure_optimizers(settings.lr, settings.weight_decay)
    autocast = _autocast_factory(device, settings.amp)
    if settings.compile:
        model.compile()

    result = FitResult(train_windows=len(train_idx), device=str(device))
    best_state = _clone_state(model)
    bad_epochs, start_epoch = 0, 0
    if resume is not None:
        start_epoch, best_state, bad_epochs = _restore(model, optimizers, resume, result, gen)

    t0, seen = time.perf_counter(), 0
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        model.on_epoch_start(epoch)
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        losses = []
        for i in range(0, len(order), settings.batch_size):
            x = windows.batch(order[i : i + settings.batch_size].to(device))
            losses.append(model.training_step(x, optimizers, autocast))
        seen += len(order)
        holdout = _holdout_loss(model, windows, hold_idx, settings.batch_size, autocast)
        train_loss = float(torch.stack(losses).float().mean())
        result.history.append({"epoch": epoch, "train_loss": train_loss, "holdout_loss": holdout})
        if holdout < result.best_holdout - 1e-7:
            result.best_holdout, result.best_epoch, bad_epochs = holdout, epoch, 0
            best_state = _clone_state(model)
        else:
            bad_epochs += 1
        result.epochs_run = epoch + 1
        if progress:
            progress(_progress(model.name, epoch, settings.epochs, train_loss, holdout, result,
                               t0, start_epoch))
        if on_epoch_end:
            on_epoch_end(epoch, _checkpoint(model, optimizers, epoch, best_state, bad_epochs, result, gen))
        if bad_epochs >= settings.patience:
            break

    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    result.samples_per_s = seen / result.seconds if result.seconds > 0 else 0.0
    return result


def _split(n: int, settings: EngineSettings, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffled train / holdout positions; the holdout drives early stopping."""
    if n < 2:
        raise ValueError(f"need at least 2 training windows, got {n}")
    perm = torch.randperm(n, generator=gen)
    if settings.max_train_windows:
        perm = perm[: settings.max_train_windows]
    n_hold = max(1, int(len(perm) * settings.holdout_fraction))
    return perm[n_hold:], perm[:n_hold]


def _fit_direct(
    model: WindowModel,
    windows: WindowSet,
    train_idx: torch.Tensor,
    hold_idx: torch.Tensor,
    settings: EngineSettings,
) -> FitResult:
    """Closed-form families: one fit, no epochs, no checkpoints (a rerun refits identically)."""
    t0 = time.perf_counter()
    model.fit_direct(windows.subset(train_idx))
    model.eval()
    train = _holdout_loss(model, windows, train_idx, settings.batch_size, contextlib.nullcontext)
    holdout = _holdout_loss(model, windows, hold_idx, settings.batch_size, contextlib.nullcontext)
    seconds = time.perf_counter() - t0
    return FitResult(
        history=[{"epoch": 0, "train_loss": train, "holdout_loss": holdout}],
        best_epoch=0, best_holdout=holdout, epochs_run=0, train_windows=len(train_idx),
        seconds=seconds, samples_per_s=len(train_idx) / seconds if seconds > 0 else 0.0,
        device=str(windows.series.device),
    )


def _autocast_factory(device: torch.device, amp: bool) -> Callable[[], Any]:
    if amp and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


@torch.no_grad()
def _holdout_loss(
    model: WindowModel, windows: WindowSet, idx: torch.Tensor, batch: int, autocast: Callable[[], Any]
) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(idx), batch * 4):
        part = idx[i : i + batch * 4].to(windows.series.device)
        with autocast():
            total += float(model.holdout_loss(windows.batch(part))) * len(part)
        count += len(part)
    return total / max(count, 1)


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _progress(name: str, epoch: int, epochs: int, train_loss: float, holdout: float,
              result: FitResult, t0: float, first: int) -> EpochProgress:
    done = epoch + 1 - first
    elapsed = time.perf_counter() - t0
    return EpochProgress(name, epoch, epochs, train_loss, holdout, result.best_epoch,
                         result.best_holdout, elapsed, elapsed / done * (epochs - epoch - 1))


def _checkpoint(
    model: WindowModel,
    optimizers: list[torch.optim.Optimizer],
    epoch: int,
    best_state: dict[str, torch.Tensor],
    bad_epochs: int,
    result: FitResult,
    gen: torch.Generator,
) -> Checkpoint:
    # Copies, never views: on the CPU `.cpu()` returns the live tensor itself, and Adam's
    # `step` stays on the CPU even for CUDA models, so an in-memory checkpoint would keep
    # changing with training (seen on CUDA: a resume restarted Adam at the wrong step).
    tensors = {f"model.{k}": _snapshot(v) for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": _snapshot(v) for k, v in best_state.items()}
    groups = []
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        for pid, state in sd["state"].items():
            for name, value in state.items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"opt{i}.{pid}.{name}"] = _snapshot(t)
        groups.append(sd["param_groups"])
    tensors["rng"] = gen.get_state()
    # The global RNG drives dropout and VAE sampling: without it a resumed run diverges.
    tensors["rng_cpu"] = torch.get_rng_state()
    device = model.device
    if device.type == "cuda":
        tensors["rng_cuda"] = torch.cuda.get_rng_state(device)
    meta = {
        "epoch": epoch,
        "bad_epochs": bad_epochs,
        "best_epoch": result.best_epoch,
        "best_holdout": result.best_holdout,
        "history": result.history,
        "param_groups": groups,
    }
    return tensors, meta


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy that later in-place updates cannot reach."""
    return t.detach().to("cpu", copy=True).contiguous()


def _restore(
    model: WindowModel,
    optimizers: list[torch.optim.Optimizer],
    checkpoint: Checkpoint,
    result: FitResult,
    gen: torch.Generator,
) -> tuple[int, dict[str, torch.Tensor], int]:
    """Load a checkpoint; returns (first epoch to run, best weights, bad epochs so far)."""
    tensors, meta = checkpoint
    device = model.device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    for i, opt in enumerate(optimizers):
        state: dict[int, dict[str, torch.Tensor]] = {}
        prefix = f"opt{i}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, name = key[len(prefix) :].split(".", 1)
                state.setdefault(int(pid), {})[name] = value.to(device) if name != "step" else value
        groups = meta["param_groups"][i]
        opt.load_state_dict({"state": state, "param_groups": groups})
    gen.set_state(tensors["rng"])
    if "rng_cpu" in tensors:
        torch.set_rng_state(tensors["rng_cpu"])
    if "rng_cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng_cuda"], device)
    result.history = list(meta["history"])
    result.best_epoch, result.best_holdout = meta["best_epoch"], meta["best_holdout"]
    result.resumed_from_epoch = meta["epoch"]
    return meta["epoch"] + 1, best, meta["bad_epochs"]


def checkpoint_metadata_json(meta: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata must be str -> str."""
    return {"nightowl": json.dumps(meta)}


def checkpoint_metadata_from_json(metadata: dict[str, str]) -> dict[str, Any]:
    return json.loads(metadata["nightowl"])
