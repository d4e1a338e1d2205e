"""The one stage sequence from validated data to registered candidate versions.

    per scope (the dataset, or each entity / group):  scale -> window
    per scope x family:  train -> calibrate -> export ONNX -> report -> register
    per scope:  ensemble of the registered families -> calibrate -> register
    per scope:  selection evidence (real + injected validation labels; [selection] rule)

Used by the training flow, the retraining flow and the benchmark runner alike,
so a benchmark version is the same artifact a nightly job would promote.
Choosing what to promote is the caller's (`choose_champion` or
`promote_if_better`). The sequence runs as its own flow run on the task runner
the config names (`[runner]`: thread pool, or Dask), stage by stage in waves:
every scope x family of a stage is submitted at once, and a wave starts when the
one before it is done, so a bounded pool never waits on itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from prefect import flow

from flows.runners import describe, on_gpu_workers, task_runner
from schemas.config import ConfigRef, DatasetConfig, FamilyConfig
from tasks.common import run_logger
from tasks.data.labelled import OperatorLabels
from tasks.data.prepare import PreparedData, scale_dataset, window_dataset
from tasks.feedback.labels import training_labels
from tasks.training.calibrate import Calibration, calibrate_candidate
from tasks.training.ensemble import build_ensemble, ensemble_members, register_ensemble
from tasks.training.export import export_candidate
from tasks.training.register import Candidate, register_candidate
from tasks.training.selection_evidence import prior_selection, selection_evidence
from tasks.training.train import TrainedCandidate, train_family
from tasks.training.training_report import report_candidate

K = TypeVar("K")


@dataclass(frozen=True)
class TrainingRun:
    """What one pass of the sequence produced for one scope; `failed` maps a family (or
    "prepare") to why it did not make a candidate."""

    run_id: str
    group: str | None
    prepared: PreparedData | None
    candidates: list[Candidate]
    failed: dict[str, str] = field(default_factory=dict)
    selection: dict[str, Any] | None = None  # the evidence rule's decision, if it ran


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _wave(submitted: dict[K, Any], failed: dict[K, str], tolerate: bool) -> dict[K, Any]:
    """Results of one wave of futures; a failure is recorded (tolerated) or re-raised."""
    done = {}
    for key, future in submitted.items():
        try:
            done[key] = future.result()
        except Exception as err:
            if not tolerate:
                raise
            failed[key] = f"{type(err).__name__}: {err}"
    return done


def _submit(stage: Callable[..., Any], items: Iterable[tuple[K, tuple]]) -> dict[K, Any]:
    return {key: stage.submit(*args) for key, args in items}


@flow(name="nightowl-candidates")
def candidates_flow(config: ConfigRef, run_id: str, groups: list[str | None],
                    tolerate_failures: bool = False,
                    labels_at: int | None = None) -> list[TrainingRun]:
    """Every configured family of every scope through the stages, each registered as a version.

    Takes a config reference, not the config: a flow run's parameters are stored by Prefect
    and shown in its UI, and the config holds credentials. With `tolerate_failures`, a
    family (or a scope) that fails, e.g. parameters that do not fit this data, is reported
    in its run's `failed` instead of ending the flow. `labels_at`: the labels table version
    the calling flow read the operators' labelled periods at; they are read again here at
    that version (a number in the run's parameters, not thousands of periods in Prefect's
    database) and applied by the data stage to every scope.
    """
    cfg = config.resolve()
    labels = OperatorLabels() if labels_at is None else training_labels(cfg, at=labels_at)
    log = run_logger(__name__)
    scopes = {g: cfg.for_group(g) for g in groups}
    log.info("%s: %d model scope(s) x %d families on %s", cfg.name, len(groups),
             len(cfg.families), describe(cfg))
    failed: dict[Any, str] = {}
    scaled = _wave(_submit(scale_dataset, ((g, (c, labels)) for g, c in scopes.items())), failed,
                   tolerate_failures)
    prepared: dict[str | None, PreparedData] = _wave(
        _submit(window_dataset, ((g, (scopes[g], s)) for g, s in scaled.items())), failed,
        tolerate_failures)
    pairs: list[tuple[str | None, FamilyConfig]] = [
        (g, f) for g in prepared for f in scopes[g].families]
    with on_gpu_workers(cfg):
        trained: dict[Any, TrainedCandidate] = _wave(_submit(train_family, (
            ((g, f.name), (scopes[g], f, prepared[g], run_id)) for g, f in pairs)), failed,
            tolerate_failures)
    calibrated: dict[Any, Calibration] = _wave(_submit(calibrate_candidate, (
        (k, (scopes[k[0]], prepared[k[0]], t)) for k, t in trained.items())), failed,
        tolerate_failures)
    _wave(_submit(export_candidate, ((k, (scopes[k[0]], trained[k])) for k in calibrated)),
          failed, tolerate_failures)
    _wave(_submit(report_candidate, (
        (k, (scopes[k[0]], trained[k], c)) for k, c in calibrated.items())), failed,
        tolerate_failures)
    registered: dict[Any, Candidate] = _wave(_submit(register_candidate, (
        (k, (scopes[k[0]], prepared[k[0]], trained[k], c)) for k, c in calibrated.items())),
        failed, tolerate_failures)
    ensembles = _ensembles(scopes, prepared, trained, registered, run_id, failed,
                           tolerate_failures)
    registered |= {(g, c.family): c for g, c in ensembles.items()}
    contenders = {g: [c for k, c in registered.items() if k[0] == g] for g in prepared}
    evidence = _wave(_submit(selection_evidence, (
        ((g, "selection"), (scopes[g], prepared[g], run_id, cands))
        for g, cands in contenders.items()
        if scopes[g].selection.rule == "evidence" and len(cands) > 1)), failed, tolerate_failures)
    if cfg.selection.rule == "prior":
        evidence = {(g, "selection"): d
                    for g, d in prior_selection(cfg, run_id, prepared, contenders).items()}

    runs = []
    for g in groups:
        why = {(k[1] if isinstance(k, tuple) else "prepare"): v for k, v in failed.items()
               if (k[0] if isinstance(k, tuple) else k) == g}
        for family, reason in why.items():
            log.warning("%s: %s failed: %s", scopes[g].label, family, reason)
        runs.append(TrainingRun(run_id, g, prepared.get(g),
                                [c for k, c in registered.items() if k[0] == g], why,
                                with_evidence(evidence.get((g, "selection")), prepared.get(g))))
    return runs


def with_evidence(selection: dict[str, Any] | None, prepared: PreparedData | None
                  ) -> dict[str, Any] | None:
    """The selection decision with the labelled events it rested on (from the operators'
    labels vs the configured slices), which the champion pointer and decisions keep."""
    if prepared is None or prepared.evidence is None:
        return selection
    return {**(selection or {}), "evidence": prepared.evidence}


def _ensembles(scopes: dict[str | None, DatasetConfig], prepared: dict[str | None, PreparedData],
               trained: dict[Any, TrainedCandidate], registered: dict[Any, Candidate],
               run_id: str, failed: dict[Any, str], tolerate: bool) -> dict[str | None, Candidate]:
    """Per scope with enough registered members: build, calibrate and register the ensemble
    (the same calibrate stage as the families; its failure is the family "ensemble"'s)."""
    members: dict[str | None, list[str]] = {}
    for g, cfg in scopes.items():
        mine = {k[1]: c for k, c in registered.items() if k[0] == g}
        if cfg.ensemble.enabled and g in prepared:
            names = ensemble_members(cfg, {k[1]: t for k, t in trained.items() if k[0] == g}, mine)
            if len(names) >= cfg.ensemble.min_members:
                members[g] = names
            else:
                run_logger(__name__).info("%s: no ensemble (%d usable member(s) < %d)", cfg.label,
                                          len(names), cfg.ensemble.min_members)
    key = {g: (g, "ensemble") for g in members}
    built = _wave(_submit(build_ensemble, ((key[g], (scopes[g], run_id, [trained[(g, f)] for f in m],
                                                     [registered[(g, f)] for f in m]))
                                           for g, m in members.items())), failed, tolerate)
    calibrated = _wave(_submit(calibrate_candidate, ((k, (scopes[k[0]], prepared[k[0]], t))
                                                     for k, t in built.items())), failed, tolerate)
    done = _wave(_submit(register_ensemble, ((k, (scopes[k[0]], prepared[k[0]], built[k], c))
                                             for k, c in calibrated.items())), failed, tolerate)
    return {k[0]: c for k, c in done.items()}


def train_candidates(cfg: DatasetConfig, run_id: str, groups: list[str | None] | None = None, *,
                     tolerate_failures: bool = False,
                     labels: OperatorLabels | None = None) -> list[TrainingRun]:
    """The sequence on the config's task runner; `groups` default to the config's own scope.
    `labels` must come from the labels table (`training_labels`): they cross into the flow
    run as the table version they were read at."""
    groups = [cfg.group] if groups is None else groups
    if labels is not None and labels.periods and labels.table_version is None:
        raise ValueError(f"{cfg.name}: operator labels without a labels table version cannot "
                         f"be handed to a training run; record them (tasks.feedback.labels) "
                         f"and read them with training_labels")
    return candidates_flow.with_options(task_runner=task_runner(cfg))(
        ConfigRef.of(cfg), run_id, groups, tolerate_failures,
        None if labels is None else labels.table_version)
