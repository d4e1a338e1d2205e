"""One scoring path: nightly, promotion, selection and the benchmark give a stored version the
SAME scores for the same rows (equality, not closeness, on one backend), and an ensemble
scores through the same function as its members.

One tiny run trains dense_ae and pca (and their ensemble) for real; the night scored is
NIGHTS[0], which is also the last validation day (what selection scores) and, for the
promotion and benchmark calls, the validation slice and the score split.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from schemas.config import DatasetConfig, SplitsConfig, TimeRange, load_config, parse_config
from tasks.common import store_for
from tasks.data.prepare import PreparedData, load_prepared
from tasks.data.synthetic import materialize
from tasks.evaluation.combiners import row_combiner
from tasks.nightly.score import commit_night, day_start, plan_night, read_scores, score_shard
from tasks.scoring import (
    CONTRIB_PREFIX,
    score_version,
    validated_context,
    version_scorer,
)
from tasks.training.promote import champion_slice_scores
from tasks.training.register import Candidate
from tasks.training.selection_evidence import (
    real_scores_of,
    scope_slice,
    training_scores,
    validation_stretch,
)
from tasks.versions import ENSEMBLE, VersionRef, read_champion, set_champion
from tests.tiny import NIGHTS, tiny_config, write_config

FAMILIES = [{"name": "dense_ae", "params": {"hidden": [8], "latent": 2}},
            {"name": "pca", "params": {}}]
NIGHT = NIGHTS[0]


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory) -> tuple[str, dict[str, Any]]:
    """dense_ae, pca and their ensemble, trained once (~15 s)."""
    import torch

    from flows.train import train_flow

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("score_path")
    data = tiny_config(root, families=FAMILIES, selection={"rule": "evidence"})
    materialize(parse_config(data).source.synthetic, data["source"]["path"])
    config = write_config(root, data)
    return config, train_flow(config)


def champion(cfg: DatasetConfig, result: dict[str, Any], family: str) -> VersionRef:
    """Make the run's `family` version the champion (what nightly and promotion score)."""
    (c,) = [c for c in result["candidates"] if c["family"] == family]
    ref = VersionRef(cfg.name, family, c["version"])
    set_champion(store_for(cfg), ref, "pr_auc", 0.5)
    return ref


def night_slice(cfg: DatasetConfig) -> DatasetConfig:
    """The config with NIGHT as the validation slice and the score split (as a retrain and a
    benchmark would cut it)."""
    night = TimeRange(start=day_start(NIGHT), end=day_start(NIGHT) + timedelta(days=1))
    return cfg.model_copy(update={"splits": SplitsConfig(
        train=cfg.splits.train, validation=[night], score=night,
        train_on_normal_only=cfg.splits.train_on_normal_only)})


def nightly_scores(cfg: DatasetConfig) -> pl.DataFrame:
    """The night as the nightly flow scores it: plan, one task per shard, the written parts."""
    shards = [score_shard.fn(cfg, NIGHT, s) for s in plan_night.fn(cfg, NIGHT).shards]
    commit_night.fn(cfg, NIGHT, shards)
    return read_scores(store_for(cfg), cfg, NIGHT)


def benchmark_scores(cfg: DatasetConfig, ref: VersionRef) -> tuple[pl.DataFrame, np.ndarray]:
    """The score split as the benchmark scores it (flows.benchmark)."""
    from flows.benchmark import score_split_rows, timed_scores

    frame, context = score_split_rows(night_slice(cfg))
    _, scored, _ = timed_scores(night_slice(cfg), ref, frame, context)
    return scored.rows, scored.scores


def selection_scores(cfg: DatasetConfig, result: dict[str, Any], ref: VersionRef
                     ) -> tuple[pl.DataFrame, np.ndarray]:
    """The validation stretch as selection scores it (training's row scores, reused)."""
    store = store_for(cfg)
    scaled, _, _ = load_prepared(cfg, PreparedData(**result["prepared"]))
    start, rows, context = validation_stretch(cfg, scaled)
    version = version_scorer(cfg, ref, store)
    scores = real_scores_of(store, cfg, result["run_id"], version, start, rows, context)
    written = training_scores(store, cfg, result["run_id"], version, start)
    if version.backend == "torch":  # training's scores are reused, and are what scoring gives
        assert written is not None
        np.testing.assert_array_equal(
            written, score_version(version, rows, context, scaled=True).scores)
    else:  # training scored with torch: another backend scores again
        assert written is None
    return rows, scores


def on_night(rows: pl.DataFrame, scores: np.ndarray) -> pl.DataFrame:
    """entity, timestamp, score of the NIGHT's rows, in that order."""
    start = day_start(NIGHT)
    frame = rows.select("entity", "timestamp").with_columns(pl.Series("score", scores,
                                                                      dtype=pl.Float64))
    return frame.filter((pl.col("timestamp") >= start)
                        & (pl.col("timestamp") < start + timedelta(days=1))
                        ).sort("entity", "timestamp")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_every_caller_gives_the_same_scores(trained, backend: str) -> None:
    config, result = trained
    cfg = load_config(config)
    cfg = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"backend": backend})})
    ref = champion(cfg, result, "dense_ae")
    assert version_scorer(cfg, ref).backend == backend

    night = nightly_scores(cfg)
    nightly = night.select("entity", "timestamp", "score")
    _, (promoted,) = champion_slice_scores(night_slice(cfg), night_slice(cfg).splits)
    bench = on_night(*benchmark_scores(cfg, ref))
    selected = on_night(*selection_scores(cfg, result, ref))

    assert nightly.height == 48 and np.isfinite(nightly["score"].to_numpy()).all()
    assert set(night["model_version"].to_list()) == {ref.version}
    for other in (on_night(promoted.rows, promoted.scores), bench, selected):
        assert other["timestamp"].to_list() == nightly["timestamp"].to_list()
        np.testing.assert_array_equal(other["score"].to_numpy(), nightly["score"].to_numpy())
    # the explanation adds up to the score on the path the night writes
    contrib = night.select(pl.col(f"^{CONTRIB_PREFIX}.*$")).to_numpy()
    assert np.allclose(contrib.sum(axis=1), night["score"].to_numpy(), rtol=1e-5)


def test_the_context_rule_cuts_nowhere_else(trained) -> None:
    """Rows scored with or without the rows before them: the same score wherever a row has
    its full history, and NaN (not scored) where it has not."""
    config, result = trained
    cfg = load_config(config)
    store = store_for(cfg)
    ref = VersionRef(cfg.name, "dense_ae", next(c["version"] for c in result["candidates"]
                                               if c["family"] == "dense_ae"))
    version = version_scorer(cfg, ref, store)
    from tasks.data.layer import load_validated

    start = day_start(NIGHT)
    rows = load_validated(store, cfg, start, start + timedelta(days=1))
    with_context = score_version(version, rows, validated_context(store, cfg, start, None,
                                                                  version.loaded.window))
    alone = score_version(version, rows)
    short = version.loaded.window - 1
    assert np.isnan(alone.scores[:short]).all() and np.isnan(alone.contributions[:short]).all()
    assert np.isfinite(with_context.scores).all()
    np.testing.assert_array_equal(alone.scores[short:], with_context.scores[short:])


def test_an_ensemble_scores_through_the_same_function(trained) -> None:
    config, result = trained
    cfg = load_config(config)
    store = store_for(cfg)
    ref = champion(cfg, result, ENSEMBLE)
    version = version_scorer(cfg, ref, store)
    assert version.loaded.is_ensemble and len(version.scorer.members) == 2

    start = day_start(NIGHT)
    from tasks.data.layer import load_validated

    rows = load_validated(store, cfg, start, start + timedelta(days=1))
    context = validated_context(store, cfg, start, None, version.loaded.window)
    scored = score_version(version, rows, context)
    members = [score_version(version_scorer(cfg, m.ref, store), rows, context)
               for m, _ in version.loaded.members]
    combine = row_combiner(version.loaded.config["ensemble"])
    expected, contrib = combine([m.contributions for m in members])
    np.testing.assert_array_equal(scored.scores, expected)
    np.testing.assert_array_equal(scored.contributions, contrib)

    night = nightly_scores(cfg)
    assert set(night["model_family"].to_list()) == {ENSEMBLE}
    np.testing.assert_array_equal(night["score"].to_numpy(), scored.scores)
    _, (promoted,) = champion_slice_scores(night_slice(cfg), night_slice(cfg).splits)
    np.testing.assert_array_equal(promoted.scores, scored.scores)
    assert read_champion(store, cfg.name)["family"] == ENSEMBLE


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_prior_rule_sees_the_scores_a_night_gives(trained, backend: str) -> None:
    """The default (prior) rule's slice holds, for every candidate, the ensemble included,
    exactly what `score_version` gives the validation rows on the configured backend
    (training's own row scores differ: an ensemble's by float rounding, ONNX's by export
    noise, enough to reorder near-ties)."""
    config, result = trained
    cfg = load_config(config)
    cfg = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"backend": backend})})
    store = store_for(cfg)
    prepared = PreparedData(**result["prepared"])
    candidates = [Candidate(VersionRef(cfg.name, c["family"], c["version"]), {}, 0.0, "", 0.0)
                  for c in result["candidates"]]
    assert {c.family for c in candidates} == {"dense_ae", "pca", ENSEMBLE}
    chosen_from = scope_slice(cfg, prepared, result["run_id"], candidates)

    scaled, _, _ = load_prepared(cfg, prepared)
    _, rows, context = validation_stretch(cfg, scaled)
    night = {c.family: score_version(version_scorer(cfg, c.ref, store), rows, context,
                                     scaled=True).scores for c in candidates}
    keep = (rows["split"] == "validation").to_numpy() & np.logical_and.reduce(
        [np.isfinite(s) for s in night.values()])
    assert keep.sum() == len(chosen_from.labels) > 0
    for family, scores in night.items():
        np.testing.assert_array_equal(chosen_from.scores[family], scores[keep])
