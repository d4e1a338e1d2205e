"""Where fanned-out tasks run, chosen in config (`[runner]`) without a code change.

Prefect's thread pool in this process by default; a Dask cluster through
prefect-dask's DaskTaskRunner for scale-out: the scheduler at `address` (or the
NIGHTOWL_DASK_ADDRESS environment variable, e.g. set by a Kubernetes deployment),
or a LocalCluster of worker processes started for the run when none is given.
NIGHTOWL_RUNNER=dask switches a deployment to Dask without touching its config.
Tasks exchange store keys only, so any worker can run any task.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from schemas.config import DatasetConfig

ADDRESS_ENV = "NIGHTOWL_DASK_ADDRESS"
KIND_ENV = "NIGHTOWL_RUNNER"


def runner_kind(cfg: DatasetConfig) -> str:
    """`[runner] kind`, unless the deployment's environment says otherwise (NIGHTOWL_RUNNER)."""
    kind = os.environ.get(KIND_ENV) or cfg.runner.kind
    if kind not in ("thread", "dask"):
        raise ValueError(f"{KIND_ENV}={kind!r}: use 'thread' or 'dask'")
    return kind


def task_runner(cfg: DatasetConfig) -> Any:
    """The configured Prefect task runner (a fresh instance: runners are started per flow run)."""
    runner = cfg.runner
    if runner_kind(cfg) == "thread":
        return ThreadPoolTaskRunner(max_workers=runner.max_workers)
    from prefect_dask import DaskTaskRunner

    address = os.environ.get(ADDRESS_ENV) or runner.address
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": runner.n_workers, "threads_per_worker": runner.threads_per_worker,
        "processes": True, "dashboard_address": None})


def describe(cfg: DatasetConfig) -> str:
    runner = cfg.runner
    if runner_kind(cfg) == "thread":
        return f"thread pool ({runner.max_workers} threads)"
    address = os.environ.get(ADDRESS_ENV) or runner.address
    return f"Dask at {address}" if address else f"Dask LocalCluster ({runner.n_workers} processes)"


@contextmanager
def on_gpu_workers(cfg: DatasetConfig) -> Iterator[None]:
    """Tasks submitted inside need a worker holding `runner.gpu_resource` (Dask only)."""
    if runner_kind(cfg) != "dask" or not cfg.runner.gpu_resource:
        yield
        return
    import dask

    with dask.annotate(resources={cfg.runner.gpu_resource: 1}):
        yield
