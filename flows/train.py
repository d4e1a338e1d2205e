"""Training flow: materialise the demo feed -> ingest -> the candidate stages -> champion -> artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.candidates import new_run_id, train_candidates
from flows.common import resolve_config
from schemas.config import DatasetConfig
from tasks.data.ingest import ingest_source
from tasks.data.synthetic import materialize
from tasks.store import safe_component
from tasks.training.register import champion_generation, choose_champion
from tasks.training.report import publish_training_artifacts


@task(name="materialize-synthetic", cache_policy=NO_CACHE)
def materialize_source(cfg: DatasetConfig) -> int:
    """Generate the built-in synthetic feed when the config asks for it."""
    if cfg.source.synthetic is None:
        return 0
    return len(materialize(cfg.source.synthetic, cfg.source.path))


@flow(name="nightowl-train", log_prints=True)
def train_flow(config: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Train every configured family and make the best one champion.

    `run_id` names the scratch area of this run; passing the id of a killed run
    resumes each family from its last checkpoint. The champion is replaced only if it is
    still the one this run saw at its start (see `choose_champion`).
    """
    run_id = safe_component(run_id, "run id") if run_id else new_run_id()
    cfg = resolve_config(config)
    generation = champion_generation(cfg)
    materialize_source(cfg)
    ingestion = ingest_source(cfg)
    run = train_candidates(cfg, run_id)
    champion = choose_champion(cfg, run.candidates, expected_generation=generation)
    publish_training_artifacts(cfg, run.candidates, champion)
    return {
        "dataset": cfg.name,
        "run_id": run_id,
        "ingestion": ingestion.to_json(),
        "prepared": run.prepared.to_json(),
        "candidates": [
            {"family": c.family, "version": c.ref.version, "key": c.ref.key, "metrics": c.metrics,
             "threshold": {"threshold": c.threshold, "method": c.threshold_method}}
            for c in run.candidates
        ],
        "champion": champion,
    }
