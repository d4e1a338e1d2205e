"""The ensemble candidate: built in the stage sequence, hashed members, scored at night
through torch and through ONNX Runtime without torch, with the same verdicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from schemas.config import load_config, parse_config
from tasks.data.synthetic import materialize
from tasks.nightly.score import read_scores
from tasks.store import Store, sha256_bytes
from tasks.versions import (
    CONFIG,
    ENSEMBLE,
    MANIFEST,
    IntegrityError,
    VersionRef,
    load_model,
    load_version_files,
    read_champion,
    set_champion,
)
from tests.tiny import NIGHTS, tiny_config, write_config

FAMILIES = [{"name": "dense_ae", "params": {"hidden": [8], "latent": 2}},
            {"name": "pca", "params": {}}]


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory) -> tuple[str, Store, dict]:
    """Two tiny families and their ensemble on two machines, the ensemble made champion."""
    import torch

    from flows.train import train_flow

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("ensemble")
    data = tiny_config(root, families=FAMILIES, threshold={"min_entity_rows": 10},
                       selection={"rule": "evidence"})
    data["source"]["synthetic"]["entities"] = 2  # per-entity thresholds: two machines
    materialize(parse_config(data).source.synthetic, data["source"]["path"])
    config = write_config(root, data)
    result = train_flow(config)
    assert result["champion"]["rule"] == "evidence"
    store = Store(load_config(config).store.root)
    (ensemble,) = [c for c in result["candidates"] if c["family"] == ENSEMBLE]
    ref = VersionRef("tiny", ENSEMBLE, ensemble["version"])
    pointer = read_champion(store, "tiny")
    set_champion(store, ref, pointer["metric"], ensemble["metrics"][pointer["metric"]])
    return config, store, result


def test_the_manifest_lists_members_with_hashes_and_a_tampered_member_is_refused(trained,
                                                                                tmp_path):
    config, store, result = trained
    ref = VersionRef("tiny", ENSEMBLE, read_champion(store, "tiny")["version"])
    spec = json.loads(load_version_files(store, ref, [CONFIG])[CONFIG])["ensemble"]
    assert sorted(m["family"] for m in spec["members"]) == ["dense_ae", "pca"]
    for m in spec["members"]:
        member = VersionRef(m["dataset"], m["family"], m["version"])
        assert m["manifest_sha256"] == sha256_bytes(store.read_bytes(f"{member.key}/{MANIFEST}"))
    listed = json.loads(store.read_bytes(f"{ref.key}/{MANIFEST}"))["members"]
    assert [(m["version"], m["manifest_sha256"]) for m in listed] == [
        (m["version"], m["manifest_sha256"]) for m in spec["members"]]
    loaded = load_model(store, ref, None)
    assert [w for _, w in loaded.members] == [m["weight"] for m in spec["members"]]

    copy = Store(f"file://{tmp_path}/store")
    shutil.copytree(store.root.removeprefix("file://"), tmp_path / "store")
    member = spec["members"][0]
    key = f"models/{member['dataset']}/{member['family']}/{member['version']}/{CONFIG}"
    copy.write_bytes(key, copy.read_bytes(key).replace(b'"window"', b'"windoW"', 1))
    with pytest.raises(IntegrityError, match=f"ensemble .*member refused: .*{CONFIG}: sha256"):
        load_model(copy, ref, None)
    manifest = key.rsplit("/", 1)[0] + f"/{MANIFEST}"
    copy.write_bytes(manifest, copy.read_bytes(manifest) + b" ")
    with pytest.raises(IntegrityError, match="member .*MANIFEST.json sha256 mismatch"):
        load_model(copy, ref, None)


def test_ensemble_contributions_add_up_and_its_threshold_is_its_own(trained):
    config, store, result = trained
    from flows.nightly import nightly_flow

    nightly_flow(config, NIGHTS[0])
    scores = read_scores(store, load_config(config), NIGHTS[0])
    assert scores.height == 96 and (scores["model_family"] == ENSEMBLE).all()
    contrib = scores.select(pl.col("^contrib__.*$")).to_numpy().astype(np.float64)
    np.testing.assert_allclose(contrib.sum(axis=1), scores["score"].to_numpy(), rtol=1e-6)
    thresholds = {c["family"]: c["threshold"]["threshold"] for c in result["candidates"]}
    assert len(set(thresholds.values())) == 3  # calibrated on its own scores


def test_each_entity_is_judged_at_night_by_its_own_calibrated_threshold(trained):
    config, store, _ = trained
    ref = VersionRef("tiny", ENSEMBLE, read_champion(store, "tiny")["version"])
    calibrated = load_model(store, ref, None).threshold
    own = {e: t["threshold"] for e, t in calibrated["per_entity"].items()}
    assert len(own) == 2 and calibrated["pooled_entities"] == {}
    assert len(set(own.values())) == 2 and calibrated["threshold"] not in own.values()
    scores = read_scores(store, load_config(config), NIGHTS[0])
    for entity, threshold in own.items():
        mine = scores.filter(pl.col("entity") == entity)
        assert mine.height == 48 and (mine["threshold"] == threshold).all()
        assert (mine["is_anomaly"] == (mine["score"] > threshold)).all()


def test_entities_with_too_few_normal_validation_rows_keep_the_pooled_threshold():
    from schemas.config import ThresholdConfig
    from tasks.training.calibrate import entity_calibration

    rng = np.random.default_rng(0)
    rows = pl.DataFrame({
        "entity": ["a"] * 400 + ["b"] * 60,
        "split": (["train"] * 200 + ["validation"] * 200) + (["train"] * 30 + ["validation"] * 30),
        "label": np.zeros(460, dtype=np.int8), "score": rng.gamma(2.0, size=460)})
    done = entity_calibration(rows, ThresholdConfig(min_entity_rows=100))
    assert list(done["per_entity"]) == ["a"] and done["per_entity"]["a"]["n_validation_normal"] == 200
    assert done["pooled_entities"] == {"b": "30 normal validation rows < 100"}
    assert entity_calibration(rows.filter(pl.col("entity") == "a"), ThresholdConfig()) == {}


def test_an_ensemble_champion_scores_a_night_without_torch_with_the_same_verdicts(trained,
                                                                                  tmp_path):
    """Torch (in process) and the scoring install (no torch importable; one ONNX graph per
    member, numpy combination) score the same night of the same ensemble alike."""
    from flows.nightly import nightly_flow
    from tests.test_flow_e2e import run_torchless

    config, store, _ = trained
    nightly_flow(config, NIGHTS[1])
    cfg = load_config(config)
    want = read_scores(store, cfg, NIGHTS[1])
    shutil.copytree(store.root, tmp_path / "store")
    data = tiny_config(Path(config).parent, store_root=f"file://{tmp_path}/store",
                       families=FAMILIES, scoring={"backend": "onnx"})
    onnx_config = write_config(tmp_path, data)
    done, loaded = run_torchless(tmp_path, "score", NIGHTS[1].isoformat(), "-c", onnx_config)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "torch" not in loaded and "onnxruntime" in loaded
    scored = json.loads(done.stdout[done.stdout.index("{"):])
    assert scored["backends"] == ["onnx"] and scored["notes"] == []
    got = read_scores(Store(f"file://{tmp_path}/store"), load_config(onnx_config), NIGHTS[1])
    assert got.height == want.height > 0 and (got["model_family"] == ENSEMBLE).all()
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=1e-4)
    assert (got["is_anomaly"] == want["is_anomaly"]).all()


def test_the_run_records_its_selection_evidence(trained):
    """Every candidate's real, injected and combined evidence, the rule, and the decision."""
    _, _, result = trained
    evidence = result["selection"]
    assert set(evidence["candidates"]) == {"dense_ae", "pca", ENSEMBLE}
    for numbers in evidence["candidates"].values():
        assert {"real_pr_auc", "injected_pr_auc", "combined"} <= set(numbers)
    # tiny data: few normal validation stretches, so only short kinds fit (all kinds: test_selection)
    assert evidence["injected_events"] > 0 and evidence["injected_kinds"]
    assert all(i["start"] >= 0 for i in evidence["injections"])
    assert "combined =" in evidence["statement"] and isinstance(evidence["fallback"], bool)
    assert evidence["why"] and result["champion"]["family"] == evidence["chosen"]
    assert result["champion"]["selection"]["chosen"] == evidence["chosen"]


def test_a_cauchy_ensemble_is_built_scored_at_night_and_explained_like_any_version(
        prefect_harness, tmp_path):
    """`[ensemble] combiner = "cauchy"`: member p-value references in its config.json, and
    the night's scores (members rescored, combined in numpy) are training's row scores."""

    from flows.nightly import nightly_flow
    from flows.train import train_flow
    from tasks.data.layer import load_validated
    from tasks.scoring import score_version, version_scorer
    from tasks.training.train import ROW_SCORES, candidate_key

    data = tiny_config(tmp_path, families=FAMILIES,
                       ensemble={"combiner": "cauchy", "max_correlation": 0.5})  # keeps two
    materialize(parse_config(data).source.synthetic, data["source"]["path"])
    config = write_config(tmp_path, data)
    result = train_flow(config, run_id="cauchy")
    assert result["selection"]["rule"] == "prior"  # the default rule, with its record
    cfg, store = load_config(config), Store(load_config(config).store.root)
    (ensemble,) = [c for c in result["candidates"] if c["family"] == ENSEMBLE]
    ref = VersionRef("tiny", ENSEMBLE, ensemble["version"])
    spec = json.loads(load_version_files(store, ref, [CONFIG])[CONFIG])["ensemble"]
    assert spec["combiner"] == "cauchy" and all("reference" in m for m in spec["members"])
    # the version scores the rows training scored, to float32 precision
    trained_rows = pl.from_arrow(store.read_parquet(
        f"{candidate_key(cfg, 'cauchy', ENSEMBLE)}/{ROW_SCORES}"))
    frame = load_validated(store, cfg).filter(  # the rows training scored
        pl.col("timestamp") <= trained_rows["timestamp"].max())
    scored = score_version(version_scorer(cfg, ref, store), frame)  # members with torch
    assert scored.rows["timestamp"].equals(trained_rows["timestamp"])
    scores, contrib = scored.scores, scored.contributions
    ok = np.isfinite(scores)
    np.testing.assert_allclose(scores[ok], trained_rows["score"].to_numpy()[ok], rtol=2e-3)
    np.testing.assert_allclose(contrib.sum(axis=1, dtype=np.float64), scores, rtol=1e-6)
    set_champion(store, ref, "pr_auc", ensemble["metrics"]["pr_auc"])
    nightly_flow(config, NIGHTS[0])
    night = read_scores(store, cfg, NIGHTS[0])
    assert night.height == 48 and (night["model_family"] == ENSEMBLE).all()
    night_contrib = night.select(pl.col("^contrib__.*$")).to_numpy().astype(np.float64)
    np.testing.assert_allclose(night_contrib.sum(axis=1), night["score"].to_numpy(), rtol=1e-6)
