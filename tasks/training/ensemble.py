"""Ensemble stage: the run's registered member versions combined into one more candidate.

Why a version of its own: it competes for champion like any family, so it needs its own
calibrated threshold, drift reference and metrics. Its row scores come from the members'
row scores already written by training (no model runs here): each member's scores are
put on a common scale by their median and IQR on normal train rows and summed
(tasks.evaluation.combiners, the robust-z mean up to a constant). The version holds no
weights: its config.json lists every member version with the sha256 of that member's
MANIFEST.json, so loading it (tasks.versions) refuses a member that changed.

    build_ensemble (row scores, fit.json in the scratch folder) -> calibrate (the
    families' own stage) -> register_ensemble (report and plots, then the families'
    register_candidate)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, process_lock, run_logger, store_for
from tasks.data.prepare import PreparedData
from tasks.evaluation.combiners import (
    CAUCHY_FORMULA,
    FORMULA,
    cauchy_scores,
    combine_scores,
    diverse_members,
    member_weights,
    robust_normaliser,
    tail_reference,
)
from tasks.store import json_bytes, sha256_bytes
from tasks.training.calibrate import Calibration
from tasks.training.export import EXPORT
from tasks.training.register import Candidate, register_candidate
from tasks.training.train import FIT, ROW_SCORES, TrainedCandidate, candidate_key
from tasks.training.training_report import PLOTTING, candidate_plots
from tasks.versions import ENSEMBLE, MANIFEST, REPORT


def ensemble_members(cfg: DatasetConfig, trained: dict[str, TrainedCandidate],
                     registered: dict[str, Candidate]) -> list[str]:
    """The families to combine: `[ensemble] members` if set, else every family of the run
    that registered with a verified ONNX graph (so the ensemble scores without torch too)."""
    if cfg.ensemble.members is not None:
        missing = sorted(set(cfg.ensemble.members) - set(registered))
        if missing:
            raise ValueError(f"{cfg.label}: [ensemble] members {missing} did not register in "
                             f"this run (registered: {sorted(registered)})")
        return list(cfg.ensemble.members)
    store = store_for(cfg)
    ok = []
    for family in registered:
        key = trained[family].file(EXPORT)
        if store.exists(key) and store.read_json(key).get("exported"):
            ok.append(family)
    return ok


@task(name="build-ensemble", cache_policy=NO_CACHE, **IO_RETRIES)
def build_ensemble(cfg: DatasetConfig, run_id: str, members: list[TrainedCandidate],
                   registered: list[Candidate]) -> TrainedCandidate:
    """Row scores and fit.json of the ensemble in its scratch folder, ready to calibrate."""
    store = store_for(cfg)
    frames = [pl.from_arrow(store.read_parquet(m.file(ROW_SCORES))) for m in members]
    normal_train = ((frames[0]["split"] == "train") & (frames[0]["label"] == 0)).to_numpy()
    scores = [f["score"].to_numpy() for f in frames]
    if cfg.ensemble.max_correlation is not None:  # strongest on validation first
        metric = cfg.selection.metric
        order = sorted(range(len(registered)), key=lambda i: -np.nan_to_num(
            registered[i].metric(metric), nan=-np.inf))
        keep = [order[i] for i in diverse_members([scores[i][normal_train] for i in order],
                                                  cfg.ensemble.max_correlation)]
        members, registered = [members[i] for i in keep], [registered[i] for i in keep]
        frames, scores = [frames[i] for i in keep], [scores[i] for i in keep]
    norms = [robust_normaliser(s[normal_train]) for s in scores]
    cauchy = cfg.ensemble.combiner == "cauchy"
    if cauchy:  # each member's p-value reference; the members weigh the same
        references = [tail_reference(s[normal_train]) for s in scores]
        weights = np.full(len(scores), 1.0 / len(scores))
        combined = cauchy_scores(scores, references)
        extra = [{"reference": r} for r in references]
    else:
        weights = member_weights([n["scale"] for n in norms])
        combined = combine_scores(scores, weights)
        extra = [{} for _ in scores]
    spec = []
    for cand, norm, weight, more in zip(registered, norms, weights, extra, strict=True):
        manifest = store.read_bytes(f"{cand.ref.key}/{MANIFEST}")
        spec.append({**cand.ref.to_json(), "manifest_sha256": sha256_bytes(manifest),
                     "weight": float(weight), **norm, **more})
    key = candidate_key(cfg, run_id, ENSEMBLE)
    frame = frames[0].select("timestamp", "entity", "split", "label").with_columns(
        pl.Series("score", combined, dtype=pl.Float64))
    store.write_parquet(f"{key}/{ROW_SCORES}", frame.to_arrow())
    store.write_bytes(f"{key}/{FIT}", json_bytes({
        "family": ENSEMBLE, "combiner": cfg.ensemble.combiner,
        "formula": CAUCHY_FORMULA if cauchy else FORMULA,
        "members": spec,
        "arguments": {"family": ENSEMBLE, "window": cfg.window.length,
                      "n_features": len(cfg.columns.features)}}))
    run_logger(__name__).info("%s: ensemble of %s (weights %s)", cfg.label,
                              [m.family for m in members], np.round(weights, 4).tolist())
    return TrainedCandidate(cfg.name, ENSEMBLE, key, 0, 0.0, "none")


def ensemble_report(label: str, fit: dict[str, Any], calibration: Calibration) -> str:
    """A short report.md: the members, their normalisers and the validation numbers."""
    lines = [f"# {label}: ensemble", "", f"Combiner: {fit['combiner']} ({fit['formula']}).", "",
             "| member | version | manifest sha256 | median | IQR | weight |", "|---|---|---|---|---|---|"]
    lines += [f"| {m['family']} | {m['version']} | {m['manifest_sha256'][:12]}… | {m['median']:.4g} "
              f"| {m['iqr']:.4g} | {m['weight']:.4g} |" for m in fit["members"]]
    lines += ["", f"Threshold ({calibration.method}): {calibration.threshold:.4g}", "",
              "| metric | validation |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in calibration.metrics.items()
              if isinstance(v, float)]
    return "\n".join(lines) + "\n"


@task(name="register-ensemble", cache_policy=NO_CACHE, **IO_RETRIES)
def register_ensemble(cfg: DatasetConfig, prepared: PreparedData, trained: TrainedCandidate,
                      calibration: Calibration) -> Candidate:
    """The ensemble's report and plots into its scratch folder, then the families' own
    registration (tasks.training.register): an immutable version, MANIFEST.json last."""
    store = store_for(cfg)
    fit = store.read_json(trained.file(FIT))
    rows = pl.from_arrow(store.read_parquet(trained.file(ROW_SCORES)))
    with process_lock(PLOTTING):  # the same plots as a family's (no training curve to draw)
        plots = candidate_plots(cfg.label, ENSEMBLE, rows, calibration.threshold, fit, None)
    for name, png in plots.items():
        store.write_bytes(trained.file(name), png)
    store.write_bytes(trained.file(REPORT), ensemble_report(cfg.label, fit, calibration).encode())
    return register_candidate.fn(cfg, prepared, trained, calibration)
