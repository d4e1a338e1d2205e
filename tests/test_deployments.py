"""Deployments end to end: a real `prefect server`, `nightowl serve`, the drift event, the retrain run.

Also checks infra/ statically (no Docker engine here): every YAML parses and
every prefect.yaml entrypoint resolves to a real flow.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.prefect_server import BIN, REPO, running_server, wait_for
from tests.tiny import tiny_config, write_config

INFRA = REPO / "infra"


@pytest.mark.integration
def test_drift_event_triggers_the_served_retrain_deployment(tmp_path):
    from schemas.config import parse_config
    from tasks.data.synthetic import materialize

    data = tiny_config(tmp_path)
    cfg = parse_config(data)
    materialize(cfg.source.synthetic, cfg.source.path)
    config = write_config(tmp_path, data)
    with running_server(tmp_path, startup_s=90) as server:
        client, procs = server.client, server.procs
        server.start("serve", str(BIN / "nightowl"), "serve", "--config", config)
        deployment = wait_for(lambda: _deployment(client, "nightowl-retrain", "retrain"), 90,
                              "retrain deployment", procs)
        wait_for(lambda: client.post("/automations/filter", json={}).json(), 30, "automation",
                 procs)
        subprocess.run(
            [sys.executable, "-c",
             "from datetime import date; from schemas.config import load_config;"
             "from tasks.nightly.drift import emit_drift_event;"
             f"emit_drift_event(load_config({config!r}), date(2026, 1, 9), "
             "{'reasons': ['test']}, None)"],
            env=server.env, cwd=REPO, check=True, timeout=60)
        run = wait_for(lambda: _finished_run(client, deployment["id"]), 150, "retrain flow run",
                       procs)
        assert run["state_type"] == "COMPLETED", server.log("serve")[-3000:]
        assert run["parameters"]["trigger"]["event"] == "nightowl.drift.detected"
        assert run["parameters"]["trigger"]["date"] == "2026-01-09"
        decisions = list((tmp_path / "store" / "models" / "tiny" / "decisions").glob("*.json"))
        assert len(decisions) == 1  # the retrain ran and recorded its decision
        shown = {a["key"]: a for a in client.post("/artifacts/latest/filter", json={}).json()}
        assert "# Retraining — tiny" in shown["retrain-tiny"]["data"]  # and the UI shows it
        assert decisions[0].name in shown["retrain-tiny"]["data"]
        gpu_limit = client.get("/concurrency_limits/tag/gpu").json()
        assert gpu_limit["concurrency_limit"] == 1  # training tasks queue for the device
        names = {d["name"] for d in client.post("/deployments/filter", json={}).json()}
        assert names == {"nightly", "train", "retrain", "backfill", "review", "maintain-tables"}


def _deployment(client: httpx.Client, flow: str, name: str) -> dict | None:
    r = client.get(f"/deployments/name/{flow}/{name}")
    return r.json() if r.status_code == 200 else None


def _finished_run(client: httpx.Client, deployment_id: str) -> dict | None:
    runs = client.post("/flow_runs/filter", json={
        "deployments": {"id": {"any_": [deployment_id]}}}).json()
    done = [r for r in runs if r["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}]
    return done[0] if done else None


# -- infra/ ----------------------------------------------------------------------------------
def test_prefect_yaml_entrypoints_resolve_to_flows():
    from prefect import Flow

    spec = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"nightly", "train", "retrain", "backfill", "review", "maintain-tables"}
    for d in deployments.values():
        module, func = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        assert isinstance(flow, Flow), d["entrypoint"]
        assert d["work_pool"]["name"] in {"cpu-pool", "gpu-pool"}
    assert deployments["nightly"]["schedules"][0]["cron"]
    assert deployments["maintain-tables"]["schedules"][0]["cron"]
    trigger = deployments["retrain"]["triggers"][0]
    assert trigger["expect"] == ["nightowl.drift.detected"]
    assert deployments["train"]["work_pool"]["name"] == "gpu-pool"


def test_compose_has_the_production_shape():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "worker-cpu", "worker-gpu", "minio"} <= set(services)
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia"
    assert "postgresql+asyncpg" in str(services["prefect-server"]["environment"])
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL" in dockerfile and "nightowl" in dockerfile


def test_dask_scale_out_is_configured_not_coded():
    """Compose and Kubernetes run a Dask cluster; deployments reach it through env only."""
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    assert {"dask-scheduler", "dask-worker", "dask-worker-gpu"} <= set(services)
    assert "--resources GPU=1" in services["dask-worker-gpu"]["command"]
    assert services["worker-cpu"]["environment"]["NIGHTOWL_DASK_ADDRESS"].endswith(":8786")
    manifests = list(yaml.safe_load_all((INFRA / "kubernetes" / "nightowl.yaml").read_text()))
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    assert {("Deployment", "dask-scheduler"), ("Service", "dask-scheduler"),
            ("Deployment", "dask-worker"), ("Deployment", "dask-worker-gpu"),
            ("Deployment", "prefect-worker")} <= names
    gpu = next(m for m in manifests if m["metadata"]["name"] == "dask-worker-gpu")
    container = gpu["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and "GPU=1" in container["command"]
    spec = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        assert d["work_pool"]["job_variables"]["env"]["NIGHTOWL_RUNNER"] == "dask", d["name"]


def test_runner_from_config_or_environment(monkeypatch, tmp_path):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runners import task_runner
    from schemas.config import parse_config
    from tests.tiny import tiny_config

    cfg = parse_config(tiny_config(tmp_path))
    monkeypatch.delenv("NIGHTOWL_RUNNER", raising=False)
    monkeypatch.delenv("NIGHTOWL_DASK_ADDRESS", raising=False)
    assert isinstance(task_runner(cfg), ThreadPoolTaskRunner)
    monkeypatch.setenv("NIGHTOWL_RUNNER", "dask")
    local = task_runner(cfg)
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 2
    monkeypatch.setenv("NIGHTOWL_DASK_ADDRESS", "tcp://scheduler:8786")
    assert task_runner(cfg).address == "tcp://scheduler:8786"
    monkeypatch.setenv("NIGHTOWL_RUNNER", "spark")
    with pytest.raises(ValueError, match="NIGHTOWL_RUNNER='spark'"):
        task_runner(cfg)


def test_training_tasks_ask_dask_for_the_gpu_resource(monkeypatch, tmp_path):
    import dask

    from flows.runners import on_gpu_workers
    from schemas.config import parse_config
    from tests.tiny import tiny_config

    monkeypatch.delenv("NIGHTOWL_RUNNER", raising=False)
    cfg = parse_config(tiny_config(tmp_path, runner={"kind": "dask", "gpu_resource": "GPU"}))
    with on_gpu_workers(cfg):
        assert dask.get_annotations() == {"resources": {"GPU": 1}}
    assert dask.get_annotations() == {}
    with on_gpu_workers(cfg.model_copy(update={"runner": cfg.runner.model_copy(
            update={"gpu_resource": None})})):
        assert dask.get_annotations() == {}
