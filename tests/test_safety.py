"""Secrets and paths: no user input can address outside the store, and no secret (webhook URL,
Secret block value, credentials) reaches a log, an exception, the store or the Prefect API.

The Secret-block test makes every failure path of alerting happen inside real flow runs
(a webhook that fails then recovers, one that never does) and then greps everything that
was written: the store, the flow-run logs kept by the Prefect API, the failure messages.
"""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import pytest
from prefect import flow
from typer.testing import CliRunner

from flows.cli import app
from schemas.config import parse_config
from tasks.common import MAX_LINE, clip
from tasks.data import ingest
from tasks.nightly.alert import AlertDeliveryError, alert_night
from tasks.nightly.score import ScoredNight
from tasks.store import Store, UnsafeKeyError, safe_component
from tests.test_alerts import NIGHT, Receiver, scores
from tests.tiny import tiny_config, write_config


@pytest.mark.parametrize("key", ["../x", "a/../../b", "./a", "a/./b", "a\\..\\b", "a\x00b"])
def test_the_store_refuses_keys_that_leave_its_root(store: Store, tmp_path: Path, key: str):
    with pytest.raises(UnsafeKeyError):
        store.write_bytes(key, b"x")
    with pytest.raises(UnsafeKeyError):
        store.read_bytes(key)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("value", ["20260101T000000Z", "run-1.a", "A_b-9"])
def test_safe_components_pass(value: str):
    assert safe_component(value, "run id") == value


@pytest.mark.parametrize("value", ["../..", "..", "a/b", "", ".hidden", "a..b", "x" * 129,
                                   "run id", "ünï"])
def test_unsafe_components_are_refused_with_a_clear_message(value: str):
    with pytest.raises(UnsafeKeyError, match="run id .* is not allowed: use 1-128 letters"):
        safe_component(value, "run id")


def test_cli_refuses_an_unsafe_run_id_before_anything_runs(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--run-id", "../../escape"])
    assert result.exit_code == 2
    assert "--run-id '../../escape' is not allowed" in result.output
    assert list(tmp_path.iterdir()) == []


def test_train_flow_refuses_an_unsafe_run_id(prefect_harness, tmp_path: Path):
    """The deployment parameter path: the flow itself checks it before its first write."""
    from flows.train import train_flow

    config = write_config(tmp_path, tiny_config(tmp_path))
    with pytest.raises(UnsafeKeyError):
        train_flow(config, run_id="../../../escape")
    assert not (tmp_path / "store").exists() and not (tmp_path.parent / "escape").exists()


def test_odd_source_names_cannot_shape_quarantine_keys(tmp_path: Path, store: Store):
    raw = tmp_path / "raw"
    raw.mkdir()
    bad = raw / "2026-01-06 (copy; rm -rf).csv"
    bad.write_bytes(b"not,a,table\n")
    cfg = parse_config(tiny_config(tmp_path))
    out = ingest.ingest_batch(store, cfg, f"file://{bad}")
    assert out.status == "quarantined" and out.keys[0].endswith("/source.csv")


def test_reasons_and_log_lines_are_bounded():
    assert len(clip("x" * 5_000_000)) <= MAX_LINE
    assert clip("two\nlines") == "two lines"


def test_configs_do_not_print_credentials(tmp_path: Path):
    data = tiny_config(tmp_path)
    data["store"]["storage_options"] = {"secret": "planted-credential"}
    data["source"]["storage_options"] = {"key": "planted-credential"}
    cfg = parse_config(data)
    assert "planted-credential" not in repr(cfg) and "planted-credential" not in str(cfg)
    assert "planted-credential" not in repr(Store(cfg.store.root, cfg.store.storage_options))


@pytest.fixture
def secret_hook(prefect_harness):
    """The webhook URL stored in a real Prefect Secret block (as production configures it)."""
    from prefect.blocks.system import Secret

    hook = Receiver(fail_first=1)
    name = f"nightowl-hook-{uuid.uuid4().hex[:8]}"
    Secret(value=hook.url).save(name, overwrite=True)
    yield hook, name
    hook.close()


def _night(tmp_path: Path, block: str) -> tuple[object, ScoredNight]:
    cfg = parse_config(tiny_config(tmp_path, alerts={"webhook_secret_block": block}))
    store = Store(cfg.store.root)
    key = f"scores/{cfg.name}/date={NIGHT.isoformat()}/scope=_dataset/part-all.parquet"
    store.write_parquet(key, scores({"m1": [1, 1, 0, 1]}).to_arrow())
    return cfg, ScoredNight(cfg.name, NIGHT.isoformat(), "scored", 4, 3, [key], "dense_ae", "v1")


def _flow_logs(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        run = client.read_flow_run(flow_run_id)
    return "\n".join(log.message for log in logs) + "\n" + str(run.state.message)


def test_secret_block_webhook_fails_then_recovers_and_is_never_written(secret_hook, tmp_path):
    hook, block = secret_hook
    cfg, scored = _night(tmp_path, block)
    retrying = alert_night.with_options(retries=1, retry_delay_seconds=0)

    @flow(name="nightowl-test-alerts")
    def night(day: date) -> dict:
        return retrying(cfg, day, scored).to_json()

    state = night(NIGHT, return_state=True)
    result = state.result()
    assert result["sent"] == 2 and len(hook.bodies) == 2  # one 503, retried, each sent once
    hook.failures = 10**6  # from now on it never recovers
    scored2 = ScoredNight(cfg.name, "2026-01-10", "scored", 4, 3, scored.keys, "dense_ae", "v2")
    Store(cfg.store.root).delete("alerts/tiny/ledger.json")

    @flow(name="nightowl-test-alerts-down")
    def down() -> dict:
        return retrying(cfg, date(2026, 1, 10), scored2).to_json()

    failed = down(return_state=True)
    assert failed.is_failed()
    with pytest.raises(AlertDeliveryError, match="answered HTTP 503"):
        failed.result()

    store = Store(cfg.store.root)
    written = "\n".join([store.read_bytes(k).decode(errors="replace") for k in store.list("")]
                        + [_flow_logs(state.state_details.flow_run_id),
                           _flow_logs(failed.state_details.flow_run_id)])
    assert "answered HTTP 503" in written  # the failure is reported...
    assert hook.secret not in written and "SECRET" not in written  # ...without the URL
