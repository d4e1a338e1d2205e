"""Maintenance of a dataset's Delta tables: compaction, vacuum, and staged parts swept.

Why scheduled: every ingestion and night adds small files and log entries; compaction
keeps reads of a day one or two files, vacuum removes files no snapshot inside the
retention window (`[store] retention_days`) needs, and the sweep removes staged score
parts that a killed run left (a live run's parts are younger than the window).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.data import tables
from tasks.data.layer import validated_key
from tasks.nightly.scores_table import scores_key, staging_prefix


def table_keys(cfg: DatasetConfig) -> list[str]:
    """Every Delta table of a dataset (labels join here)."""
    return [validated_key(cfg), scores_key(cfg)]


@task(name="maintain-table", cache_policy=NO_CACHE, **IO_RETRIES)
def maintain_table(cfg: DatasetConfig, key: str) -> dict[str, Any]:
    """Compact, then vacuum outside the retention window."""
    done = tables.maintain(store_for(cfg), key, int(cfg.store.retention_days * 24))
    run_logger(__name__).info("%s: %s", key, done)
    return done


@task(name="sweep-staging", cache_policy=NO_CACHE, **IO_RETRIES)
def sweep_staging(cfg: DatasetConfig) -> int:
    """Remove staged score parts older than the retention window (left by killed runs)."""
    store = store_for(cfg)
    cutoff = time.time() - cfg.store.retention_days * 86400
    old = [k for k in store.list(staging_prefix(cfg)) if modified_at(store, k) < cutoff]
    store.delete_many(old)
    return len(old)


def modified_at(store: Any, key: str) -> float:
    """A key's modification time (POSIX seconds), on a local folder or S3."""
    info = store.fs.info(store.path(key))
    moment = info.get("mtime") or info.get("LastModified") or info.get("created")
    return moment if isinstance(moment, int | float) else moment.timestamp()
