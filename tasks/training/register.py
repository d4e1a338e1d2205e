"""Registration stage: a calibrated candidate becomes an immutable version; the best becomes champion.

The version's files are exactly what the earlier stages left in the candidate's
scratch folder (weights, threshold, drift reference, ONNX graph, report and
plots) plus config.json and metrics.json composed here; MANIFEST.json is
written last (tasks.versions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.data.prepare import PreparedData
from tasks.store import json_bytes
from tasks.training.calibrate import Calibration
from tasks.training.export import EXPORT
from tasks.training.lineage import training_data
from tasks.training.train import FIT, TrainedCandidate
from tasks.versions import (
    CONFIG,
    DRIFT_REFERENCE,
    METRICS,
    ONNX,
    REPORT,
    SCALER,
    THRESHOLD,
    WEIGHTS,
    ChampionConflict,
    VersionRef,
    read_champion,
    register_version,
    set_champion,
)

COPIED = (THRESHOLD, DRIFT_REFERENCE)
OPTIONAL = (ONNX, REPORT)
MEMBER_FIELDS = ("dataset", "family", "version", "manifest_sha256")
PLOTS = "plots"
SELECTION_RECORD = (
    "rule", "statement", "candidates", "chosen", "why", "kind", "prior", "prior_source",
    "prior_provenance", "events", "challenger", "margin", "confidence", "required_confidence",
    "switched", "top", "fallback", "real_events", "injected_events", "injected_kinds",
    "evidence")
"""What of a selection decision the champion pointer keeps (both rules' keys)."""


@dataclass(frozen=True)
class Candidate:
    """A registered version competing for champion, with the numbers it competes on."""

    ref: VersionRef
    metrics: dict[str, float]
    threshold: float
    threshold_method: str
    fit_seconds: float

    @property
    def family(self) -> str:
        return self.ref.family

    def metric(self, name: str) -> float:
        value = self.metrics.get(name)
        return float("nan") if value is None else float(value)


def version_config(cfg: DatasetConfig, fit: dict[str, Any],
                   prepared: PreparedData | None = None) -> dict[str, Any]:
    """config.json: everything needed to rebuild and score the model (an ensemble: its
    members, each with the sha256 of its MANIFEST.json, instead of training settings), and
    the validated table snapshot it trained on (`nightowl training-set` rebuilds those rows)."""
    trained = ({"ensemble": {k: fit[k] for k in ("combiner", "formula", "members")}}
               if is_ensemble_fit(fit) else {"training": fit["settings"]})
    return {"dataset": cfg.name, "group": cfg.group, "model": fit["arguments"], **trained,
            "window": cfg.window.model_dump(), "columns": cfg.columns.model_dump(),
            "scaling": cfg.scaling.model_dump(),
            "data": {**training_data(cfg, prepared.table_version if prepared else None),
                     "evidence": prepared.evidence if prepared else None}}


def is_ensemble_fit(fit: dict[str, Any]) -> bool:
    """An ensemble's fit.json lists member versions; it has no weights of its own."""
    return "members" in fit


def fit_summary(fit: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's `fit` section: how the candidate was fitted (an ensemble: its members)."""
    if is_ensemble_fit(fit):
        return {"members": [m["family"] for m in fit["members"]]}
    return {k: v for k, v in fit.items() if k not in ("arguments", "feature_scale")}  # old fits


@task(name="register", cache_policy=NO_CACHE, **IO_RETRIES)
def register_candidate(cfg: DatasetConfig, prepared: PreparedData, trained: TrainedCandidate,
                       calibration: Calibration) -> Candidate:
    """Turn a calibrated candidate, a family or the ensemble, into an immutable version
    (MANIFEST written last; an ensemble's lists its members too)."""
    store = store_for(cfg)
    fit = store.read_json(trained.file(FIT))
    ensemble = is_ensemble_fit(fit)
    export = store.read_json(trained.file(EXPORT)) if store.exists(trained.file(EXPORT)) else None
    files = {name: store.read_bytes(trained.file(name))
             for name in COPIED + (() if ensemble else (WEIGHTS,))}
    files |= {name: store.read_bytes(trained.file(name)) for name in OPTIONAL
              if store.exists(trained.file(name))}
    files |= {key[len(trained.key) + 1:]: store.read_bytes(key)
              for key in store.list(trained.file(PLOTS))}
    files[SCALER] = store.read_bytes(prepared.scaler_key)
    files[CONFIG] = json_bytes(version_config(cfg, fit, prepared))
    files[METRICS] = json_bytes({"validation": calibration.metrics, "export": export,
                                 "fit": fit_summary(fit)})
    members = ([{k: m[k] for k in MEMBER_FIELDS} for m in fit["members"]] if ensemble else None)
    ref = register_version(store, cfg.scope_name, trained.family, files, members)
    run_logger(__name__).info("registered %s", store.uri(ref.key))
    return Candidate(ref, calibration.metrics, calibration.threshold, calibration.method,
                     trained.fit_seconds)


@task(name="read-champion-generations", cache_policy=NO_CACHE, **IO_RETRIES)
def champion_generations(cfg: DatasetConfig, groups: list[str | None]) -> dict[str | None, int]:
    """Each scope's champion pointer generation now (0: none yet): what a run may replace."""
    store = store_for(cfg)
    pointers = {g: read_champion(store, cfg.for_group(g).scope_name) for g in groups}
    return {g: int(p["generation"]) if p else 0 for g, p in pointers.items()}


@task(name="choose-champion", cache_policy=NO_CACHE, **IO_RETRIES)
def choose_champion(cfg: DatasetConfig, candidates: list[Candidate],
                    expected_generation: int | None = None,
                    selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """The candidate the selection stage chose (`[selection] rule = "prior"` or
    "evidence"), else the best by the configured metric, becomes champion; NaN metrics
    never win. The pointer keeps the evidence behind the choice (events, prior, margin,
    confidence, why).

    With `expected_generation` (what the run read when it started) the pointer moves only
    if nobody promoted meanwhile; a run that lost that race keeps the newer champion and
    says so (`promoted: false` and why) instead of overwriting it. The returned dict is
    the champion pointer as it now stands, plus `promoted` and `reason`.
    """
    metric = cfg.selection.metric
    valid = [c for c in candidates if c.metric(metric) == c.metric(metric)]
    if not valid:
        raise ValueError(f"no candidate has a defined {metric}; cannot choose a champion")
    chosen = selection.get("chosen") if selection else None
    by_evidence = [c for c in candidates if c.family == chosen]
    best = by_evidence[0] if by_evidence else max(valid, key=lambda c: c.metric(metric))
    details: dict[str, Any] = {
        "candidates": {c.family: {"version": c.ref.version, metric: c.metric(metric),
                                  "metrics": dict(c.metrics)} for c in candidates},
        "rule": selection.get("rule", "evidence") if by_evidence else "metric"}
    if selection:
        details["selection"] = {k: selection[k] for k in SELECTION_RECORD if k in selection}
    store = store_for(cfg)
    logger = run_logger(__name__)
    try:
        pointer = set_champion(store, best.ref, metric, best.metric(metric),
                               expected_generation=expected_generation, details=details)
    except ChampionConflict as err:
        current = read_champion(store, cfg.scope_name) or {}
        reason = (f"not promoted: the champion changed while this run trained ({err}); "
                  f"kept {current.get('family')}/{current.get('version')}")
        logger.warning("%s: %s/%s %s", cfg.label, best.family, best.ref.version, reason)
        return {**current, "promoted": False, "reason": reason,
                "candidate": {**best.ref.to_json(), metric: best.metric(metric)}}
    logger.info("champion of %s: %s/%s (%s=%.4f; by %s)", cfg.label, best.family,
                best.ref.version, metric, best.metric(metric), details["rule"])
    why = (f"chosen by the {details['rule']} rule: {selection['why']}" if by_evidence
                          else f"best {metric} of this run")
    return {**pointer, "promoted": True, "reason": why}
