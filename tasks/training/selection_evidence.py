"""Selection stage: the evidence that picks a scope's champion when labels are few.

The default rule ("prior", tasks.evaluation.selection.challenge) reads every candidate's
validation row scores as a night would give them (training's row_scores.parquet where
those are exactly what `score_version` gives, else scored again on that path; only rows of
the validation split reach it) and keeps a prior champion unless a challenger beats it with
confidence: the shipped prior of the kind of data (tasks.evaluation.priors), challenged
first by every scope of the dataset at once (a fleet's pooled prior), then by each scope.

The opt-in "evidence" rule:
Every registered candidate of the scope (the ensemble too) scores its validation rows
twice: as they are (real labels) and with synthetic anomalies injected on their normal
stretches (tasks.evaluation.injection; injected labels). Only validation rows are ever
changed or read: the score split is not in the prepared data at all, and each injected
segment keeps a window of untouched normal rows on either side. The rule that turns the
two into a choice, with its fallback to the ensemble, is tasks.evaluation.selection's
(README, "Choosing the champion"); its numbers go to the run's selection.json.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import run_logger, store_for
from tasks.data.prepare import PreparedData, load_prepared
from tasks.evaluation.injection import inject
from tasks.evaluation.priors import configured_prior, infer_kind
from tasks.evaluation.selection import (
    LabelledSlice,
    SelectionSettings,
    challenge,
    event_ids,
    pooled_prior,
    select,
    validation_slice,
)
from tasks.scoring import VersionScorer, full_history, score_version, version_scorer
from tasks.store import Store
from tasks.training.register import Candidate
from tasks.training.train import ROW_SCORES, candidate_key
from tasks.versions import ENSEMBLE

SELECTION = "selection.json"


def selection_key(cfg: DatasetConfig, run_id: str) -> str:
    """Where a run's selection evidence lands (beside its candidates' scratch folders)."""
    return f"{candidate_key(cfg, run_id, '_selection')}/{SELECTION}"


def settings_of(cfg: DatasetConfig) -> SelectionSettings:
    s = cfg.selection
    return SelectionSettings(injected_weight=s.injected_weight, bootstrap=s.bootstrap,
                             confidence=s.confidence, seed=s.seed, fallback=ENSEMBLE,
                             min_events=s.min_events)


def validation_stretch(cfg: DatasetConfig, scaled: pl.DataFrame
                       ) -> tuple[datetime, pl.DataFrame, pl.DataFrame]:
    """(where the scored stretch starts, its prepared rows: every one from the first
    validation row on, the prepared rows before them: their context). Operators' labelled
    rows join the validation split, possibly before the configured slices."""
    labelled = scaled.filter(pl.col("split") == "validation")["timestamp"].min()
    start = min([r.start for r in cfg.splits.validation]
                + ([labelled] if isinstance(labelled, datetime) else []))
    return (start, scaled.filter(pl.col("timestamp") >= start),
            scaled.filter(pl.col("timestamp") < start))


def real_scores_of(store: Store, cfg: DatasetConfig, run_id: str, version: VersionScorer,
                   start: datetime, rows: pl.DataFrame, context: pl.DataFrame) -> np.ndarray:
    """A candidate's scores of the stretch as they are: training's, where it wrote the same
    ones, else scored again."""
    written = training_scores(store, cfg, run_id, version, start)
    return written if written is not None else score_version(version, rows, context,
                                                             scaled=True).scores


def training_scores(store: Store, cfg: DatasetConfig, run_id: str, version: VersionScorer,
                    start: datetime) -> np.ndarray | None:
    """The version's scores of the rows from `start` on as training wrote them
    (row_scores.parquet), under the context rule: what `score_version` gives those rows
    with torch. None where that would not hold: another backend, or an ensemble (its
    training scores combine member scores, not member contributions)."""
    key = f"{candidate_key(cfg, run_id, version.ref.family)}/{ROW_SCORES}"
    if version.backend != "torch" or version.loaded.is_ensemble or not store.exists(key):
        return None
    rows = pl.from_arrow(store.read_parquet(key, ["timestamp", "entity", "score"]))
    scores = np.where(full_history(rows, version.loaded.window), rows["score"].to_numpy(), np.nan)
    return scores[(rows["timestamp"] >= start).to_numpy()]


def prior_settings(cfg: DatasetConfig) -> SelectionSettings:
    """The prior rule's settings; normal rows are resampled a window at a time (>= 25 rows)."""
    s = cfg.selection
    return SelectionSettings(bootstrap=s.bootstrap, confidence=s.confidence, seed=s.seed,
                             min_events=s.min_events, min_margin=s.min_margin,
                             normal_block=max(cfg.window.length, 25))


def scope_slice(cfg: DatasetConfig, prepared: PreparedData, run_id: str,
                candidates: list[Candidate]) -> LabelledSlice:
    """A scope's validation rows with every candidate's scores as a night would give them
    (`real_scores_of`, the evidence rule's too): training's row scores where they are
    exactly those (a torch family), else scored again on the one path (an ensemble, which
    combines its members' contributions; an ONNX backend)."""
    store = store_for(cfg)
    scaled, _, _ = load_prepared(cfg, prepared)
    start, rows, context = validation_stretch(cfg, scaled)
    scores = {c.family: real_scores_of(store, cfg, run_id, version_scorer(cfg, c.ref, store),
                                       start, rows, context) for c in candidates}
    return validation_slice(rows["split"].to_numpy(), rows["label"].to_numpy(),
                            rows["entity"].to_numpy(), scores, cfg.label)


@task(name="selection-prior", cache_policy=NO_CACHE)
def prior_selection(cfg: DatasetConfig, run_id: str, prepared: dict[str | None, PreparedData],
                    contenders: dict[str | None, list[Candidate]]
                    ) -> dict[str | None, dict[str, Any]]:
    """Each scope's choice under the prior rule (written to its selection.json): the kind's
    shipped prior, challenged by all scopes' validation events pooled when there are
    several, then by each scope's own. Each scope's prepared data gives its validation rows
    and its events by origin (operators' labels vs configured slices), recorded with the
    decision."""
    store = store_for(cfg)
    kind = cfg.selection.kind or infer_kind(len(cfg.columns.features), cfg.window.length)
    settings = prior_settings(cfg)
    slices = {g: scope_slice(cfg.for_group(g), prepared[g], run_id, c)
              for g, c in contenders.items() if c}
    prior = configured_prior(kind, cfg.selection.prior)
    fleet = [s for g, s in slices.items() if g is not None]  # the fallback scope holds the
    if len(fleet) > 1:                                        # same events again: not pooled
        prior = pooled_prior(fleet, prior, settings)
    decisions = {}
    for group, slice_ in slices.items():
        scoped = cfg.for_group(group)
        decision = _finite({**challenge([slice_], prior, settings), "kind": kind,
                            "settings": asdict(settings),
                            "evidence": prepared[group].evidence})
        store.write_json(selection_key(scoped, run_id), decision)
        run_logger(__name__).info("%s: selection kept %s" if not decision["switched"]
                                  else "%s: selection chose %s", scoped.label,
                                  decision["chosen"])
        decisions[group] = decision
    return decisions


def eligible_rows(frame: pl.DataFrame, window: int) -> np.ndarray:
    """Normal validation rows, minus each entity's first and last `window` rows (a segment
    and its margin then never straddle two entities)."""
    position = frame.select(pos=pl.int_range(pl.len()).over("entity"),
                            n=pl.len().over("entity"))
    inner = ((position["pos"] >= window) & (position["pos"] < position["n"] - window)).to_numpy()
    return (frame["split"] == "validation").to_numpy() & (frame["label"] == 0).to_numpy() & inner


@task(name="selection-evidence", cache_policy=NO_CACHE)
def selection_evidence(cfg: DatasetConfig, prepared: PreparedData, run_id: str,
                       candidates: list[Candidate]) -> dict[str, Any]:
    """Each candidate on the real and on the injected validation slice; the rule's decision."""
    store = store_for(cfg)
    scaled, _, _ = load_prepared(cfg, prepared)
    start, val, context = validation_stretch(cfg, scaled)
    features, window = cfg.columns.features, cfg.window.length
    eligible = eligible_rows(val, window)
    x = val.select(features).to_numpy().astype(np.float64)
    normal_train = scaled.filter((pl.col("split") == "train") & (pl.col("label") == 0))
    injected = inject(x, eligible, window=window, count=cfg.selection.injected_events,
                      seed=cfg.selection.seed,
                      reference=normal_train.select(features).to_numpy() if normal_train.height
                      else None)
    changed = val.with_columns(*(pl.Series(f, injected.x[:, i], dtype=val.schema[f])
                                 for i, f in enumerate(features)))
    real_scores, inj_scores = {}, {}
    for c in candidates:  # tasks.scoring's one path: the scores a night gives these rows
        version = version_scorer(cfg, c.ref, store)
        real_scores[c.family] = real_scores_of(store, cfg, run_id, version, start, val, context)
        inj_scores[c.family] = score_version(version, changed, context, scaled=True).scores
    ok = (val["split"] == "validation").to_numpy() & np.logical_and.reduce(
        [np.isfinite(s) for s in (*real_scores.values(), *inj_scores.values())])
    labels = val["label"].to_numpy().astype(np.int8)
    groups = val["entity"].to_numpy()
    real = LabelledSlice("real", labels[ok], event_ids(labels[ok], groups[ok]),
                         {k: v[ok] for k, v in real_scores.items()})
    keep = ok & (labels == 0)  # rows really anomalous say nothing about injected ones
    inj = LabelledSlice("injected", injected.labels[keep],
                        event_ids(injected.labels[keep], groups[keep]),
                        {k: v[keep] for k, v in inj_scores.items()})
    decision = select(real, inj, settings_of(cfg))
    decision["injections"] = [i.to_json() for i in injected.injections]
    decision["injected_kinds"] = sorted({i.kind for i in injected.injections})
    decision["settings"] = asdict(settings_of(cfg))
    decision["evidence"] = prepared.evidence
    store.write_json(selection_key(cfg, run_id), _finite(decision))
    run_logger(__name__).info("%s: selection chose %s (%s)", cfg.label, decision["chosen"],
                              decision["why"])
    return _finite(decision)


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined numbers become None."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
