"""The one stage sequence from validated data to registered candidate versions.

    scale -> window -> for each family: train -> calibrate -> export ONNX -> report -> register

Used by the training flow, the retraining flow and the benchmark runner alike,
so a benchmark version is the same artifact a nightly job would promote.
Choosing what to promote is the caller's: `choose_champion` (train, benchmark)
or `promote_if_better` (retrain). Must run inside a flow (the stages are tasks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.config import DatasetConfig
from tasks.common import run_logger
from tasks.data.prepare import PreparedData, scale_dataset, window_dataset
from tasks.training.calibrate import calibrate_candidate
from tasks.training.export import export_candidate
from tasks.training.register import Candidate, register_candidate
from tasks.training.report import report_candidate
from tasks.training.train import train_family


@dataclass(frozen=True)
class TrainingRun:
    """What one pass of the sequence produced; `failed` maps a family to why it did not fit."""

    run_id: str
    prepared: PreparedData
    candidates: list[Candidate]
    failed: dict[str, str] = field(default_factory=dict)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def train_candidates(cfg: DatasetConfig, run_id: str, *,
                     tolerate_failures: bool = False) -> TrainingRun:
    """Every configured family through the stages, registered as a version.

    With `tolerate_failures`, a family whose parameters do not fit this data
    (ValueError, e.g. a latent as wide as a univariate window) is reported in
    `failed` instead of ending the run; the run fails only if every family does.
    """
    prepared = window_dataset(cfg, scale_dataset(cfg))
    candidates: list[Candidate] = []
    failed: dict[str, str] = {}
    for family in cfg.families:
        try:
            trained = train_family(cfg, family, prepared, run_id)
        except ValueError as err:
            if not tolerate_failures:
                raise
            run_logger(__name__).warning("%s: %s failed: %s", cfg.name, family.name, err)
            failed[family.name] = str(err)
            continue
        calibration = calibrate_candidate(cfg, prepared, trained)
        export_candidate(cfg, trained)
        report_candidate(cfg, trained, calibration.metrics)
        candidates.append(register_candidate(cfg, prepared, trained, calibration))
    if not candidates:
        raise ValueError(f"{cfg.name}: every family failed: {failed}")
    return TrainingRun(run_id, prepared, candidates, failed)
