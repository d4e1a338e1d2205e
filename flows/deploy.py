"""Deployments of the nightly operation, served locally by `nightowl serve`.

Six deployments, the same ones infra/prefect.yaml declares for work pools:
nightly (cron), train (manual or UI), retrain (on `nightowl.drift.detected`
for this dataset), backfill (manual, a date range), review (cron, after the nightly:
a suspended run waiting for the operator's form; suspending needs a deployment) and
maintain-tables (weekly compaction and vacuum of the Delta tables). Built only when asked:
importing this module builds nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from flows.common import resolve_config
from tasks.nightly.drift import EVENT

log = logging.getLogger(__name__)
NIGHTLY_CRON = "0 2 * * *"
REVIEW_CRON = "0 6 * * *"  # the night before, once the nightly run has alerted
MAINTAIN_CRON = "0 5 * * 0"  # Sundays, after the night: compaction + vacuum of the tables


def retrain_trigger(dataset: str) -> Any:
    """React to this dataset's drift event; the flow's own cooldown debounces repeats."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"retrain-{dataset}-on-drift",
        expect={EVENT},
        match={"prefect.resource.id": f"nightowl.dataset.{dataset}"},
        parameters={"trigger": {"event": "{{ event.event }}",
                                "date": "{{ event.payload.date }}"},
                    "group": "{{ event.payload.group }}"},  # "" for the dataset-level model
    )


def build_deployments(config: str | None = None, cron: str = NIGHTLY_CRON) -> list[Any]:
    """RunnerDeployments for `prefect.serve` (config path is passed to every flow run)."""
    from flows.maintain import maintain_flow
    from flows.nightly import backfill_flow, nightly_flow
    from flows.retrain import retrain_flow
    from flows.review import review_flow
    from flows.train import train_flow

    cfg = resolve_config(config)
    params = {"config": config}
    tags = ["nightowl", cfg.name]
    return [
        nightly_flow.to_deployment(name="nightly", cron=cron, parameters=params, tags=tags),
        train_flow.to_deployment(name="train", parameters=params, tags=[*tags, "gpu"]),
        retrain_flow.to_deployment(name="retrain", parameters=params, tags=[*tags, "gpu"],
                                   triggers=[retrain_trigger(cfg.name)]),
        backfill_flow.to_deployment(name="backfill", parameters=params, tags=tags),
        review_flow.to_deployment(name="review", cron=REVIEW_CRON, parameters=params, tags=tags),
        maintain_flow.to_deployment(name="maintain-tables", cron=MAINTAIN_CRON,
                                    parameters=params, tags=tags),
    ]


GPU_TAG = "gpu"


def ensure_gpu_slots(slots: int = 1) -> None:
    """A task-run concurrency limit on the `gpu` tag: training tasks queue for the device
    instead of sharing it (the same as `prefect concurrency-limit create gpu 1`)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)
    log.info("concurrency limit: %d task run(s) tagged %r at a time", slots, GPU_TAG)


def serve(config: str | None = None, cron: str = NIGHTLY_CRON, limit: int | None = None,
          gpu_slots: int = 1) -> None:
    """Register the deployments with the API in PREFECT_API_URL and run them here (blocks)."""
    from prefect import serve as prefect_serve

    ensure_gpu_slots(gpu_slots)
    deployments = build_deployments(config, cron)
    log.info("serving %s", [d.name for d in deployments])
    prefect_serve(*deployments, limit=limit)
