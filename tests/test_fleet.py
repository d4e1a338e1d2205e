"""Fleets: a model per entity (or group), new entities reported and scored by the fallback,
and results that do not depend on the task runner (thread pool vs a real Dask LocalCluster)."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from schemas.config import default_config_path, load_config, parse_config
from tasks.store import Store
from tests.tiny import NIGHTS, tiny_config, write_config

DEMO_NIGHT = date(2026, 1, 23)


def demo_fleet(root: Path, **model) -> dict:
    """The embedded demo config with entity scope on, a small budget, and a store under root."""
    data = tomllib.loads(default_config_path().read_text())
    data["source"]["path"] = str(root / "raw" / "*.csv")
    data["store"]["root"] = f"file://{root / 'store'}"
    data["families"] = [{"name": "dense_ae", "params": {"hidden": [32], "latent": 4}},
                        {"name": "pca"}]
    data["training"].update(epochs=3)
    data["model"] = {"scope": "entity", **model}
    return data


@pytest.fixture(scope="module")
def fleet(prefect_harness, tmp_path_factory):
    from flows.train import train_flow

    root = tmp_path_factory.mktemp("fleet")
    data = demo_fleet(root)
    config = write_config(root, data)
    return config, train_flow(config), Store(data["store"]["root"])


def test_entity_scope_trains_a_champion_per_entity_and_a_fallback(fleet):
    config, result, store = fleet
    cfg = load_config(config)
    entities = [f"machine-{i:02d}" for i in range(4)]
    assert result["scope"] == "entity" and set(result["scopes"]) == {"*", *entities}
    for entity in entities:
        champion = result["scopes"][entity]["champion"]
        assert champion["dataset"] == f"synthetic/groups/{entity}"
        assert store.exists(f"models/synthetic/groups/{entity}/CHAMPION.json")
        assert store.list(f"datasets/synthetic/groups/{entity}/scaled")  # its own scaler
    assert store.exists("models/synthetic/CHAMPION.json")  # the fallback
    scalers = {e: store.read_json(next(k for k in store.list(f"datasets/synthetic/groups/{e}/scaled")
                                       if k.endswith("scaler.json"))) for e in entities}
    assert len({tuple(s["center"]) for s in scalers.values()}) == len(entities)
    assert cfg.for_group("machine-01").group_entities() == ["machine-01"]


def test_each_entity_is_scored_by_its_own_champion(fleet):
    from flows.nightly import nightly_flow

    config, result, store = fleet
    night = nightly_flow(config, DEMO_NIGHT)
    assert night["plan"]["fallback"] == [] and night["plan"]["not_modelled"] == []
    scores = pl.concat(pl.from_arrow(store.read_parquet(k)) for k in night["scoring"]["keys"])
    versions = scores.group_by("entity").agg(pl.col("model_version").unique())
    for entity, (version,) in versions.iter_rows():
        assert version == result["scopes"][entity]["champion"]["version"]
    assert scores.height == night["scoring"]["rows"] == 4 * 288
    for entity in ("machine-00", "machine-03"):
        assert store.exists(f"drift/synthetic/groups/{entity}/date={DEMO_NIGHT}/report.json")
        assert store.exists(f"alerts/synthetic/groups/{entity}/date={DEMO_NIGHT}/alerts.jsonl")
    assert len(night["scopes"]) == 4


def test_a_new_entity_is_reported_and_scored_by_the_fallback(fleet, tmp_path):
    from flows.nightly import nightly_flow

    config, result, store = fleet
    raw = Path(load_config(config).source.path).parent
    day = DEMO_NIGHT.replace(day=24)
    rows = pl.read_csv(raw / f"{day}.csv").filter(pl.col("entity") == "machine-02")
    rows.with_columns(pl.lit("m-new").alias("entity")).write_csv(raw / f"{day}-new-host.csv")

    night = nightly_flow(config, day)
    assert night["plan"]["fallback"] == ["m-new"]
    scores = pl.concat(pl.from_arrow(store.read_parquet(k)) for k in night["scoring"]["keys"])
    new = scores.filter(pl.col("entity") == "m-new")
    assert new.height == rows.height
    assert new["model_version"].unique().to_list() == [result["scopes"]["*"]["champion"]["version"]]

    from tasks.nightly.score import plan_night

    data = load_config(config).model_dump()
    no_fallback = parse_config({**data, "model": {**data["model"], "fallback": False}})
    plan = plan_night.fn(no_fallback, day)
    assert plan.not_modelled == ["m-new"] and plan.fallback == []
    assert "m-new" not in {e for s in plan.shards for e in s.entities}


def test_runner_independence_thread_pool_vs_dask_local_cluster(prefect_harness, tmp_path):
    """Same run on Prefect's thread pool and on a LocalCluster of 2 worker processes:
    byte-identical weights and identical scores."""
    from flows.nightly import nightly_flow
    from flows.train import train_flow
    from tasks.data.synthetic import materialize

    outputs = {}
    for kind in ("thread", "dask"):
        root = tmp_path / kind
        data = tiny_config(root, model={"scope": "entity", "fallback": False},
                           runner={"kind": kind, "n_workers": 2})
        data["source"]["synthetic"]["entities"] = 2
        data["families"] = [{"name": "dense_ae", "params": {"hidden": [8], "latent": 2}},
                            {"name": "transformer_ae", "params": {"d_model": 8, "heads": 2,
                                                                  "layers": 1, "feedforward": 16,
                                                                  "latent": 2}}]
        cfg = parse_config(data)
        materialize(cfg.source.synthetic, data["source"]["path"])
        config = write_config(root, data)
        result = train_flow(config)
        night = nightly_flow(config, NIGHTS[0])
        store = Store(cfg.store.root)
        weights = {tuple(k.split("/")[3:5]): store.read_bytes(k)  # (entity, family)
                   for k in store.list("models/tiny/groups")
                   if k.endswith("weights.safetensors") and "/_runs/" not in k}
        scores = pl.concat(pl.from_arrow(store.read_parquet(k)) for k in night["scoring"]["keys"])
        outputs[kind] = (set(result["scopes"]), weights,
                         scores.drop("model_version").sort("entity", "timestamp"))
    (groups_t, weights_t, scores_t), (groups_d, weights_d, scores_d) = outputs["thread"], outputs["dask"]
    assert groups_t == groups_d == {"machine-00", "machine-01"}
    assert len(weights_t) == 4 and weights_t == weights_d
    assert scores_t.height == 2 * 48 and scores_t.equals(scores_d)


def test_each_scope_records_the_evidence_behind_its_champion(fleet):
    """The prior rule in a fleet: the kind's shipped prior, challenged by the entities'
    validation events pooled, then by each scope; every pointer says what it rested on."""
    _, result, store = fleet
    for scope, summary in result["scopes"].items():
        record, champion = summary["selection"], summary["champion"]
        assert record["rule"] == "prior" and record["kind"] == "multivariate"
        assert record["prior_source"] == "fleet"
        assert record["prior_provenance"]["from"] == "shipped:multivariate"
        assert record["prior_provenance"]["scopes"] == 4  # the entities, not the fallback again
        assert record["chosen"] == champion["family"] and record["events"] >= 1
        assert set(record["candidates"]) == {"dense_ae", "pca", "ensemble"}
        dataset = "synthetic" if scope == "*" else f"synthetic/groups/{scope}"
        pointer = store.read_json(f"models/{dataset}/CHAMPION.json")
        assert pointer["rule"] == "prior"
        assert {k: pointer["selection"][k] for k in ("events", "prior", "why")} == {
            k: record[k] for k in ("events", "prior", "why")}
