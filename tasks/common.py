"""Small helpers every stage uses: the store for a config, the compute device, the logger,
retry settings and Prefect artifact keys. Imports no torch: nightly scoring workers run
without it (the `scoring` install); `compute_device` imports it when a stage asks."""

from __future__ import annotations

import json
import logging
import re
import threading
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from schemas.config import DatasetConfig
from tasks.store import Store, merge_options, s3_options_from_block

if TYPE_CHECKING:
    import torch

# Retries for stages that touch the store or the source: transient I/O, not bad data.
IO_RETRIES: dict[str, object] = {"retries": 3, "retry_delay_seconds": [2, 5, 15]}

# The longest reason or log line a stage writes; the full detail stays in the stored report.
MAX_LINE = 500


def clip(text: str, limit: int = MAX_LINE) -> str:
    """One bounded line: a 5 MB field in a bad file must not become a 5 MB log line."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}... [{len(text) - limit + 30} chars cut]"


def shown_name(name: str) -> str:
    """A name fit for a one-line reason or log: control characters (a newline in a file
    name), other unprintables and backslashes written as escapes."""
    return "".join(ch if ch.isprintable() and ch != "\\" else ch.encode("unicode_escape").decode()
                   for ch in name)


def shown_url(url: str) -> str:
    """THE form in which a URL is logged, reported or stored: no user:password@, no query
    or fragment (a presigned URL's token), odd characters escaped."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):  # a local path: '?' and '#' are part of a file name
        return shown_name(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return shown_name(urlunsplit((parts.scheme, netloc, parts.path, "", "")))


def redact(text: str, secrets: list[str | None]) -> str:
    """`text` with every secret value replaced, for messages built from third-party errors."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def store_for(cfg: DatasetConfig) -> Store:
    """The dataset's store; S3 credentials from `[store] credentials_block` when it names one."""
    options = json.dumps(cfg.store.storage_options, sort_keys=True, default=str)
    return _store(cfg.store.root, options, cfg.store.credentials_block)


@lru_cache(maxsize=8)
def _store(root: str, options: str, credentials_block: str | None) -> Store:
    """Cached per process; the cache key holds the block's name, never its secret. Every
    pipeline stage keeps state by compare-and-swap, so the store is probed for conditional
    writes here, before a stage writes anything (UnsupportedStoreError says what to do)."""
    storage_options = json.loads(options)
    if credentials_block:
        storage_options = merge_options(storage_options, s3_options_from_block(credentials_block))
    store = Store(root, storage_options)
    store.check_conditional_writes()
    return store


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


_LOCKS: dict[str, threading.Lock] = {}


def process_lock(name: str) -> threading.Lock:
    """A named lock shared by the threads of this process, for libraries whose state is
    process-global (torch's RNG, the ONNX exporter, matplotlib's text layout).

    Looked up by name at the call, never held in a stage's module globals: a Dask worker
    receives task functions pickled with the globals they use, and a lock cannot travel.
    """
    return _LOCKS.setdefault(name, threading.Lock())
