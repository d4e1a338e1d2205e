"""Training flow: ingest -> scale -> window -> train each family -> calibrate -> register -> champion."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import resolve_config
from schemas.config import DatasetConfig
from tasks.calibrate import calibrate_candidate
from tasks.drift import training_reference
from tasks.ingest import ingest_source
from tasks.prepare import PreparedData, scale_dataset, window_dataset
from tasks.register import VersionRef, choose_champion, register_candidate
from tasks.report import publish_training_artifacts, report_candidate
from tasks.synthetic import materialize
from tasks.train import train_family


@task(name="materialize-synthetic", cache_policy=NO_CACHE)
def materialize_source(cfg: DatasetConfig) -> int:
    """Generate the built-in synthetic feed when the config asks for it."""
    if cfg.source.synthetic is None:
        return 0
    return len(materialize(cfg.source.synthetic, cfg.source.path))


Candidate = tuple[VersionRef, dict[str, Any]]


def train_candidates(cfg: DatasetConfig, run_id: str) -> tuple[PreparedData, list[Candidate]]:
    """scale -> window -> for each family: train, calibrate, report, register a version.

    Shared by the training and the retraining flow; choosing what to promote is theirs.
    """
    scaled_key, scaler_key, rows = scale_dataset(cfg)
    windows_key, n_windows = window_dataset(cfg, scaled_key)
    prepared = PreparedData(scaled_key, scaler_key, windows_key, rows, n_windows)
    candidates = []
    for family in cfg.families:
        candidate = train_family(cfg, family, prepared, run_id)
        evaluation = calibrate_candidate(cfg, family, prepared, candidate)
        reference = training_reference(cfg, prepared, candidate, evaluation["threshold"])
        evaluation["extra_files"] = {**evaluation.get("extra_files", {}), **reference}  # drift
        evaluation = report_candidate(cfg, family, prepared, candidate, evaluation)  # report.md
        ref = register_candidate(cfg, scaler_key, candidate, evaluation)
        candidates.append((ref, evaluation))
    return prepared, candidates


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


@flow(name="nightowl-train", log_prints=True)
def train_flow(config: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Train every configured family and make the best one champion.

    `run_id` names the scratch area of this run; passing the id of a killed run
    resumes each family from its last checkpoint.
    """
    cfg = resolve_config(config)
    run_id = run_id or new_run_id()
    materialize_source(cfg)
    ingestion = ingest_source(cfg)

    prepared, candidates = train_candidates(cfg, run_id)
    champion = choose_champion(cfg, [(ref, ev["metrics"]) for ref, ev in candidates])
    publish_training_artifacts(cfg, candidates, champion)
    return {
        "dataset": cfg.name,
        "run_id": run_id,
        "ingestion": ingestion,
        "prepared": prepared.to_json(),
        "candidates": [
            {"family": ref.family, "version": ref.version, "key": ref.key,
             "metrics": ev["metrics"], "threshold": ev["threshold"]}
            for ref, ev in candidates
        ],
        "champion": champion,
    }


def main(config: str | Path | None = None) -> dict[str, Any]:
    return train_flow(str(config) if config else None)
