"""The whole training DAG as real Prefect flow runs on a small synthetic fleet."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tomllib
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from schemas.config import DatasetConfig, default_config_path, parse_config
from tasks.common import store_for
from tasks.data import tables
from tasks.nightly.score import read_scores
from tasks.versions import VersionRef, champion_ref, load_version_files, read_champion


def small_config(tmp_path: Path) -> DatasetConfig:
    """The demo config shrunk: 3 machines x 8 sensors, 10 days at 5 minutes (fixed seed)."""
    data = tomllib.loads(default_config_path().read_text())
    data["source"]["path"] = str(tmp_path / "raw" / "*.csv")
    data["source"]["synthetic"].update(entities=3, sensors=8, days=10, freq_minutes=5,
                                       clean_days=6, anomalies_per_entity=6, seed=3)
    data["columns"]["features"] = [f"s{i:02d}" for i in range(8)]
    data["splits"] = {
        "train": {"start": datetime(2026, 1, 5), "end": datetime(2026, 1, 11)},
        "validation": [{"start": datetime(2026, 1, 11), "end": datetime(2026, 1, 13)}],
        "score": {"start": datetime(2026, 1, 13), "end": datetime(2026, 1, 15)},
    }
    data["families"] = [f for f in data["families"] if f["name"] == "dense_ae"]
    data["store"]["root"] = f"file://{tmp_path}/store"
    return parse_config(data, origin="small-synthetic")


def write_config(cfg: DatasetConfig, path: Path) -> str:
    import json

    # TOML writer-free: the loader accepts JSON-compatible TOML via parse_config, so go
    # through a tiny TOML emitter for the few types the config uses.
    path.write_text(_to_toml(json.loads(cfg.model_dump_json(exclude_none=True))))
    return str(path)


def _to_toml(data: dict, prefix: str = "") -> str:
    scalars, tables, arrays = [], [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            arrays.append((key, value))
        else:
            scalars.append(f"{key} = {_toml_value(value)}")
    out = [f"[{prefix}]"] if prefix and scalars else []
    out += scalars
    for key, value in tables:
        out.append(_to_toml(value, f"{prefix}.{key}" if prefix else key))
    for key, items in arrays:
        for item in items:
            name = f"{prefix}.{key}" if prefix else key
            out.append(f"[[{name}]]")
            out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(out) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    try:  # ISO datetimes become TOML local datetimes
        datetime.fromisoformat(text)
        return text if "T" in text else f'"{text}"'
    except ValueError:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    from flows.nightly import backfill_flow
    from flows.train import train_flow

    tmp = tmp_path_factory.mktemp("e2e")
    cfg = small_config(tmp)
    path = write_config(cfg, tmp / "small.toml")
    result = train_flow(path)
    nights = backfill_flow(path)
    return cfg, path, result, nights


def test_training_flow_meets_detection_and_false_positive_targets(trained) -> None:
    cfg, _, result, _ = trained
    quarantined = [b["source"] for b in result["ingestion"]["batches"]
                   if b["status"] == "quarantined"]
    assert [q.rsplit("/", 1)[-1] for q in quarantined] == ["2026-01-14-resend.csv"]
    (candidate,) = result["candidates"]
    assert candidate["family"] == "dense_ae"
    assert candidate["metrics"]["roc_auc"] >= 0.9
    # The calibrated threshold keeps its false-positive promise on normal rows it never
    # saw (the score range), within 3 binomial standard deviations of the target.
    store = store_for(cfg)
    scores = pl.scan_delta(tables.table_uri(store, f"scores/{cfg.name}")).collect()  # every night
    normal = scores.filter(pl.col("label") == 0)
    fpr = normal["is_anomaly"].mean()
    alpha = cfg.threshold.target_fpr
    assert fpr <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / normal.height)
    assert scores.filter(pl.col("label") == 1)["is_anomaly"].mean() > 0.4


def test_store_holds_every_layer_and_a_verifiable_champion(trained) -> None:
    cfg, _, result, nights = trained
    store = store_for(cfg)
    keys = store.list("")
    for prefix in ("datasets/synthetic/validated/date=", "datasets/synthetic/scaled/",
                   "datasets/synthetic/windows/", "models/synthetic/dense_ae/",
                   "scores/synthetic/date="):
        assert any(k.startswith(prefix) for k in keys), prefix
    pointer = read_champion(store, cfg.name)
    assert pointer["version"] == result["candidates"][0]["version"]
    files = load_version_files(store, champion_ref(pointer))
    assert {"weights.safetensors", "config.json", "scaler.json", "threshold.json",
            "metrics.json"} <= set(files)
    assert [n["status"] for n in nights] == ["scored"] * len(nights)


def test_scores_layer_explains_each_row(trained) -> None:
    cfg, _, _, nights = trained
    store = store_for(cfg)
    (key,) = nights[1]["keys"]  # a small night: one shard
    day = pl.from_arrow(store.read_parquet(key))
    contrib = day.select(pl.col("^contrib__.*$")).to_numpy().astype(np.float64)
    assert contrib.shape[1] == len(cfg.columns.features)
    np.testing.assert_allclose(contrib.sum(axis=1), day["score"].to_numpy(), rtol=1e-4)
    assert day["timestamp"].dt.date().n_unique() == 1
    assert (day["is_anomaly"] == (day["score"] > day["threshold"])).all()


def test_bad_night_is_quarantined_and_leaves_earlier_data_and_champion_untouched(trained) -> None:
    from flows.train import train_flow  # noqa: F401 - ensures flows import cleanly
    from tasks.data.ingest import ingest_source

    cfg, _, _, _ = trained
    store = store_for(cfg)
    before = {k: store.read_bytes(k) for k in store.list("") if k.startswith(
        ("datasets/synthetic/validated/", "models/synthetic/", "scores/synthetic/"))}
    raw_dir = Path(cfg.source.path).parent
    good = pl.read_csv(sorted(raw_dir.glob("*.csv"))[-1])
    bad = good.with_columns(pl.col("s03").cast(pl.String).map_elements(lambda _: "n/a",
                                                                         return_dtype=pl.String))
    bad.write_csv(raw_dir / "2026-01-15.csv")
    report = ingest_source.fn(cfg)
    (outcome,) = [b for b in report.batches if b.source.endswith("2026-01-15.csv")]
    assert outcome.status == "quarantined" and outcome in report.quarantined
    assert "2026-01-15.csv" in outcome.reason and "'s03'" in outcome.reason
    after = {k: store.read_bytes(k) for k in before}
    assert after == before


def test_nightly_scoring_through_onnx_runtime_matches_torch(trained) -> None:
    from datetime import date

    from schemas.config import ScoringConfig
    from tasks.nightly.score import plan_night, read_scores, score_shard

    cfg, _, _, nights = trained
    store = store_for(cfg)
    day = date.fromisoformat(nights[0]["date"])
    torch_scores = read_scores(store, cfg, day)
    onnx_cfg = cfg.model_copy(update={"scoring": ScoringConfig(backend="onnx")})
    (shard,) = plan_night.fn(onnx_cfg, day).shards
    result = score_shard.fn(onnx_cfg, day, shard)
    onnx_scores = pl.from_arrow(store.read_parquet(result.key))
    assert onnx_scores.height == torch_scores.height
    np.testing.assert_allclose(onnx_scores["score"].to_numpy(), torch_scores["score"].to_numpy(),
                               rtol=1e-4, atol=1e-5)
    assert (onnx_scores["is_anomaly"] == torch_scores["is_anomaly"]).mean() > 0.999


def test_the_ui_shows_plots_progress_and_links_of_the_run_and_the_nights(trained) -> None:
    """Every artifact an operator opens in the Prefect UI, with its type; on a local store each
    plot is an inline PNG the browser renders (a data: URI) and links are file:// URIs."""
    from tests.artifacts import image_urls, latest_artifacts, link_urls, png_at

    cfg, _, result, nights = trained
    (quarantined,) = [b for b in result["ingestion"]["batches"] if b["status"] == "quarantined"]
    expected = {
        "train-synthetic-candidates": "table", "train-synthetic-report": "markdown",
        "train-synthetic-dense-ae": "markdown", "train-synthetic-champion": "markdown",
        "train-synthetic-dense-ae-progress": "progress", "nightly-synthetic": "markdown",
        "nightly-synthetic-segments": "table", "nightly-synthetic-scores": "markdown",
        "backfill-synthetic": "progress",
        f"quarantine-synthetic-{quarantined['batch_id']}": "markdown",
    }
    artifacts = latest_artifacts(list(expected))
    assert {k: a.type for k, a in artifacts.items()} == expected

    plots = {k: image_urls(artifacts[k].data) for k in
             ("train-synthetic-report", "train-synthetic-dense-ae", "nightly-synthetic")}
    assert [len(plots[k]) for k in plots] == [1, 3, 1]  # champion timeline; 3 plots; the night
    for url in (u for urls in plots.values() for u in urls):
        assert url.startswith("data:image/png;base64,")
        png_at(url)
    store = store_for(cfg)
    version = f"models/synthetic/dense_ae/{result['champion']['version']}"
    assert link_urls(artifacts["train-synthetic-champion"].data) == [store.uri(version) + "/"]
    assert link_urls(artifacts["nightly-synthetic-scores"].data) == [  # the night's partition
        store.uri(nights[-1]["keys"][0].split("/scope=")[0]) + "/"]
    quarantine = artifacts[f"quarantine-synthetic-{quarantined['batch_id']}"].data
    assert "2026-01-14-resend.csv: column 's01' failed rule 'not null'" in quarantine
    assert store.exists(link_urls(quarantine)[0].removeprefix(store.uri("")))  # validation.json

    training, backfill = (artifacts[k] for k in ("train-synthetic-dense-ae-progress",
                                                  "backfill-synthetic"))
    assert training.data == 100.0 and training.description.startswith("dense_ae: done, ")
    assert backfill.data == 100.0 and backfill.description.startswith("2/2 nights")
    assert training.updated > training.created  # moved while the work ran, not created at 100


# -- scoring without torch (after the UI test: these nights publish artifacts under the same
# keys, and a torch-free night has no plot, since matplotlib is not in the scoring set) ------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def scoring_copy(trained, tmp_path: Path, backend: str = "onnx",
                 revalidate: bool = True) -> tuple[DatasetConfig, str]:
    """The trained store copied under a config that scores with `backend`; `revalidate`
    leaves the ingestion ledger out, so the night's batches go through GX again."""
    from schemas.config import ScoringConfig

    cfg, _, _, _ = trained
    source = Path(cfg.store.root.removeprefix("file://"))
    ignore = shutil.ignore_patterns("ingested") if revalidate else None
    shutil.copytree(source, tmp_path / "store", ignore=ignore)
    copy = cfg.model_copy(update={
        "scoring": ScoringConfig(backend=backend),
        "store": cfg.store.model_copy(update={"root": f"file://{tmp_path}/store"})})
    return copy, write_config(copy, tmp_path / "scoring.toml")


def run_torchless(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`nightowl ARGS` where only the scoring install's distributions import (tests/torchless.py)."""
    from prefect.settings import PREFECT_API_URL

    loaded = tmp_path / "loaded.json"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the harness's server
    done = subprocess.run([sys.executable, str(REPO / "tests" / "torchless.py"), str(loaded), *args],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    return done, json.loads(loaded.read_text()) if loaded.exists() else []


def assert_same_night(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """Identical verdicts, and scores within the export rule's tolerance (ROW_TOLERANCE x the
    threshold; measured differences are ~1e-7 of it)."""
    from tasks.training.export import ROW_TOLERANCE

    assert got.height == want.height > 0
    assert got["timestamp"].to_list() == want["timestamp"].to_list()
    threshold = float(want["threshold"][0])
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=0,
                               atol=ROW_TOLERANCE * threshold)
    assert (got["is_anomaly"] == want["is_anomaly"]).all()


def test_the_nightly_flow_runs_where_torch_cannot_be_imported(trained, tmp_path) -> None:
    """Ingest (GX), score through model.onnx, drift, alerts, artifacts: no torch on the path,
    and every module it loads comes from the `scoring` install's distributions."""
    from importlib.metadata import packages_distributions

    from tests.torchless import canonical, scoring_distributions

    cfg, _, _, nights = trained
    night = nights[1]
    copy, path = scoring_copy(trained, tmp_path)
    done, loaded = run_torchless(tmp_path, "score", night["date"], "-c", path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    scored = json.loads(done.stdout[done.stdout.index("{"):])
    assert scored["backends"] == ["onnx"] and scored["notes"] == [] and scored["status"] == "scored"
    store = store_for(copy)
    day = date.fromisoformat(night["date"])
    assert_same_night(read_scores(store, copy, day), read_scores(store_for(cfg), cfg, day))
    assert store.list(f"datasets/{cfg.name}/ingested/")  # the night was validated again, by GX
    assert "torch" not in loaded and "great_expectations" in loaded and "onnxruntime" in loaded
    owners = packages_distributions()  # and each came from the scoring set
    used = {canonical(d) for module in loaded for d in owners.get(module, [])}
    assert used and used <= scoring_distributions(), used - scoring_distributions()


def champion_without_graph(cfg: DatasetConfig) -> VersionRef:
    """The champion re-registered as a version whose export was refused (no model.onnx)."""
    from tasks.store import json_bytes
    from tasks.versions import METRICS, ONNX, register_version, set_champion

    store = store_for(cfg)
    ref = champion_ref(read_champion(store, cfg.name))
    files = load_version_files(store, ref)
    metrics = json.loads(files.pop(METRICS))
    metrics["export"] = {**metrics["export"], "exported": False,
                         "reason": "3 of 1536 probe rows change verdict at threshold 1.5"}
    del files[ONNX]
    new = register_version(store, cfg.name, ref.family, {**files, METRICS: json_bytes(metrics)})
    set_champion(store, new, "pr_auc", 0.5)
    return new


def test_a_champion_without_a_graph_is_scored_with_torch_and_the_night_says_so(trained,
                                                                               tmp_path) -> None:
    from datetime import date

    from tasks.nightly.score import commit_night, plan_night, score_shard

    cfg, _, _, nights = trained
    copy, _ = scoring_copy(trained, tmp_path, revalidate=False)
    ref = champion_without_graph(copy)
    day = date.fromisoformat(nights[0]["date"])
    shards = [score_shard.fn(copy, day, shard) for shard in plan_night.fn(copy, day).shards]
    (scored,) = commit_night.fn(copy, day, shards)  # what the night's artifact shows
    assert scored.backend == "torch" and scored.model_version == ref.version
    note = scored.note
    assert ref.version in note and "no model.onnx" in note
    assert "3 of 1536 probe rows change verdict" in note
    assert_same_night(read_scores(store_for(copy), copy, day),
                      read_scores(store_for(cfg), cfg, day))


def test_without_torch_a_champion_without_a_graph_fails_with_one_clear_message(trained,
                                                                              tmp_path) -> None:
    copy, path = scoring_copy(trained, tmp_path, revalidate=False)
    ref = champion_without_graph(copy)
    done, _ = run_torchless(tmp_path, "score", trained[3][0]["date"], "-c", path)
    assert done.returncode != 0
    message = (f"ScoringBackendError: {copy.name}: [scoring] backend is 'onnx' but champion "
               f"{ref.family}/{ref.version} has no model.onnx (export refused: 3 of 1536 probe "
               f"rows change verdict at threshold 1.5), and torch is not installed")
    assert message in done.stderr


@pytest.mark.slow
def test_the_scoring_install_scores_a_night_that_the_full_install_trained(trained,
                                                                           tmp_path) -> None:
    """`make scoring-venv` (nightowl[scoring], cached by its stamp like .venv): no torch
    there, and `nightowl score` through the champion's graph gives the full install's night."""
    from prefect.settings import PREFECT_API_URL

    build = subprocess.run(["make", "scoring-venv", f"PYTHON={sys.executable}"], cwd=REPO,
                           text=True, capture_output=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-3000:]
    venv = REPO / ".venv-scoring" / "bin"
    no_torch = subprocess.run([str(venv / "python"), "-c", "import torch"], capture_output=True,
                              text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    cfg, _, _, nights = trained
    copy, path = scoring_copy(trained, tmp_path)
    night = nights[1]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run([str(venv / "nightowl"), "score", night["date"], "-c", path],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    scored = json.loads(done.stdout[done.stdout.index("{"):])
    assert scored["backends"] == ["onnx"]
    day = date.fromisoformat(night["date"])
    assert_same_night(read_scores(store_for(copy), copy, day),
                      read_scores(store_for(cfg), cfg, day))
