"""Small helpers every stage uses: the store for a config, the compute device, the logger,
retry settings and Prefect artifact keys. Imports no torch: nightly scoring workers run
without it (the `scoring` install); `compute_device` imports it when a stage asks."""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import TYPE_CHECKING

from schemas.config import DatasetConfig
from tasks.store import Store

if TYPE_CHECKING:
    import torch

# Retries for stages that touch the store or the source: transient I/O, not bad data.
IO_RETRIES: dict[str, object] = {"retries": 3, "retry_delay_seconds": [2, 5, 15]}


def store_for(cfg: DatasetConfig) -> Store:
    return _store(cfg.store.root, tuple(sorted(cfg.store.storage_options.items())))


@lru_cache(maxsize=8)
def _store(root: str, options: tuple) -> Store:
    return Store(root, dict(options))


def run_logger(name: str) -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a run (so the UI shows it), a module logger outside."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - MissingContextError outside a run
        return logging.getLogger(name)


def compute_device(cfg: DatasetConfig, preference: str | None = None) -> torch.device:
    """The device for torch work (a family may override the dataset's preference), with the
    configured CPU thread count applied first."""
    import torch

    from models.engine import pick_device

    torch.set_num_threads(cfg.training.cpu_threads)
    return pick_device(preference or cfg.training.device)


def artifact_key(*parts: str) -> str:
    """A stable Prefect artifact key: lowercase letters, digits and single dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")
