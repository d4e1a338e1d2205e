"""Training flow: materialise the demo feed -> ingest -> plan the model scopes ->
the candidate stages (flows/candidates.py, on the configured task runner) ->
a champion per scope -> artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.candidates import TrainingRun, new_run_id, train_candidates
from flows.common import resolve_config
from schemas.config import DatasetConfig
from tasks.data.ingest import ingest_source
from tasks.data.ingest_report import publish_ingestion
from tasks.data.prepare import plan_scopes
from tasks.data.synthetic import materialize
from tasks.feedback.labels import training_labels
from tasks.store import safe_component
from tasks.training.register import champion_generations, choose_champion
from tasks.training.training_report import publish_fleet_artifacts, publish_training_artifacts

FALLBACK = "*"  # how results and artifacts name the dataset-level model of a fleet


@task(name="materialize-synthetic", cache_policy=NO_CACHE)
def materialize_source(cfg: DatasetConfig) -> int:
    """Generate the built-in synthetic feed when the config asks for it."""
    if cfg.source.synthetic is None:
        return 0
    return len(materialize(cfg.source.synthetic, cfg.source.path))


def scope_summary(run: TrainingRun, champion: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "prepared": run.prepared.to_json() if run.prepared else None,
        "candidates": [
            {"family": c.family, "version": c.ref.version, "key": c.ref.key, "metrics": c.metrics,
             "threshold": {"threshold": c.threshold, "method": c.threshold_method}}
            for c in run.candidates],
        "failed": run.failed,
        "selection": run.selection,
        "champion": champion,
    }


@flow(name="nightowl-train", log_prints=True)
def train_flow(config: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Train every configured family (per entity or group when the model scope says so) and
    make the best one champion of its scope.

    `run_id` names the scratch area of this run; passing the id of a killed run
    resumes each family from its last checkpoint. The champion is replaced only if it is
    still the one this run saw at its start (see `choose_champion`).
    """
    run_id = safe_component(run_id, "run id") if run_id else new_run_id()
    cfg = resolve_config(config)
    materialize_source(cfg)
    ingestion = ingest_source(cfg)
    publish_ingestion(cfg, ingestion)
    plan = plan_scopes(cfg)
    # Each scope's champion generation before training: a promotion that lands meanwhile
    # (retraining) is kept, and this run reports that it lost the race.
    generations = champion_generations(cfg, plan.groups)
    runs = train_candidates(cfg, run_id, plan.groups, labels=training_labels(cfg))
    scopes: dict[str, dict[str, Any]] = {}
    for run in runs:
        scoped = cfg.for_group(run.group)
        champion = (choose_champion(scoped, run.candidates, generations[run.group],
                                    run.selection) if run.candidates else None)
        scopes[FALLBACK if run.group is None else run.group] = scope_summary(run, champion)
    result: dict[str, Any] = {"dataset": cfg.name, "run_id": run_id, "scope": cfg.model.scope,
                              "ingestion": ingestion.to_json()}
    if cfg.model.scope == "dataset":
        (run,) = runs
        publish_training_artifacts(cfg, run.candidates, scopes[FALLBACK]["champion"])
        return {**result, **scopes[FALLBACK]}
    publish_fleet_artifacts(cfg, {g: s["champion"] for g, s in scopes.items() if s["champion"]},
                            {g: s["failed"] for g, s in scopes.items() if s["failed"]},
                            plan.skipped)
    return {**result, "scopes": scopes, "not_modelled": plan.skipped,
            "champion": scopes.get(FALLBACK, {}).get("champion")}
