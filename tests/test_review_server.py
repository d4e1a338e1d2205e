"""The review in the Prefect UI, against a real `prefect server` and `nightowl serve`: a run of
the review deployment lists the night's alert segments, publishes them, suspends with the
typed form (holding no process), is resumed through the REST API with the form's input as
the UI sends it, and writes the answers as labels exactly once; a second submission is
refused and writes nothing; a review nobody answers expires as a failed run, nothing written.
The feedback artifact lists each suspended review with a link to its run, and drops it once
answered.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from tests.labelled import ENTITY, NIGHT, alert_log, ingested
from tests.prefect_server import BIN, running_server, wait_for

pytestmark = [pytest.mark.integration]


def night_with_alerts(cfg) -> list[str]:
    """Three anomalous segments of the tiny machine in the night's alert log; their ids,
    highest peak first."""
    alert_log(cfg, {6: 5.0, 7: 4.0, 20: 3.0, 30: 2.0, 31: 2.5})
    return [f"{ENTITY}@{NIGHT + timedelta(minutes=30 * i):%Y-%m-%dT%H:%M:%S}" for i in (6, 30, 20)]


def flow_run(client: httpx.Client, run_id: str) -> dict:
    return client.get(f"/flow_runs/{run_id}").json()


def start_review(client: httpx.Client, deployment: dict, **parameters) -> str:
    created = client.post(f"/deployments/{deployment['id']}/create_flow_run",
                          json={"parameters": {"day": NIGHT.date().isoformat(), **parameters}})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def state_is(client: httpx.Client, run_id: str, *types: str) -> dict | None:
    run = flow_run(client, run_id)
    if run["state_type"] in {"FAILED", "CRASHED"} and "FAILED" not in types:
        raise AssertionError(f"review run ended {run['state_type']}: {run['state']['message']}")
    return run if run["state_type"] in types else None


def test_a_suspended_review_resumed_with_input_writes_labels_once(tmp_path):
    from tasks.feedback.labels import current_labels, label_history

    cfg, config = ingested(tmp_path)
    ids = night_with_alerts(cfg)
    with running_server(tmp_path, startup_s=120) as server:
        client, procs = server.client, server.procs
        server.start("serve", str(BIN / "nightowl"), "serve", "--config", config)
        deployment = wait_for(lambda: _deployment(client), 120, "review deployment", procs)

        run_id = start_review(client, deployment)
        paused = wait_for(lambda: state_is(client, run_id, "PAUSED"), 180, "suspended review",
                          procs)
        assert paused["state"]["name"] == "Suspended"  # not Paused: its process has exited
        assert paused["state"]["state_details"]["pause_reschedule"] is True
        shown = {a["key"]: a for a in client.post("/artifacts/latest/filter", json={}).json()}
        review = shown["review-tiny"]["data"]
        assert all(f"`{i}`" in review for i in ids) and "# Review — tiny" in review
        feedback = shown["feedback-tiny"]["data"]  # published just before suspending
        assert f"/runs/flow-run/{run_id})" in open_reviews_of(feedback)
        assert f"| {NIGHT.date()} |" in open_reviews_of(feedback)

        form = client.get(f"/flow_runs/{run_id}/input/"
                          f"{paused['state']['state_details']['run_input_keyset']['description']}")
        assert "review-tiny" in form.json()  # the form's description names the artifact
        answers = {"reviewer": "ana", "segments": [
            {"segment": ids[0], "entity": ENTITY, "start": ids[0].split("@")[1],
             "end": ids[0].split("@")[1], "answer": "confirm", "note": "pump trip"},
            {"segment": ids[1], "entity": ENTITY, "start": ids[1].split("@")[1],
             "end": ids[1].split("@")[1], "answer": "dismiss"},
            {"segment": ids[2], "entity": ENTITY, "start": ids[2].split("@")[1],
             "end": ids[2].split("@")[1], "answer": "skip"}],
            "missed": [{"entity": ENTITY, "start": "2026-01-09T20:00:00",
                        "end": "2026-01-09T21:00:00", "note": "leak seen on site"}]}
        resumed = client.post(f"/flow_runs/{run_id}/resume", json={"run_input": answers})
        assert resumed.json()["status"] == "ACCEPT", resumed.text
        again = client.post(f"/flow_runs/{run_id}/resume", json={"run_input": answers})
        assert again.json()["status"] != "ACCEPT"  # the form cannot be submitted twice
        done = wait_for(lambda: state_is(client, run_id, "COMPLETED"), 180, "resumed review",
                        procs)
        assert done["state_type"] == "COMPLETED", server.log("serve")[-3000:]

        history = label_history(cfg)
        assert history.height == 3  # two answers and the missed incident, once each
        assert set(history["request"]) == {f"ui:{run_id}:{ids[0]}", f"ui:{run_id}:{ids[1]}",
                                           f"ui:{run_id}:missed:{ENTITY}:2026-01-09 20:00:00"
                                           f":2026-01-09 21:00:00"}
        now = {r["segment"]: r for r in current_labels(cfg).iter_rows(named=True)}
        assert (now[ids[0]]["verdict"], now[ids[0]]["note"], now[ids[0]]["who"]) == (
            "anomaly", "pump trip", "ana")
        assert now[ids[1]]["verdict"] == "normal" and ids[2] not in now
        assert {r["source"] for r in now.values()} == {"ui"}
        feedback = latest(client, "feedback-tiny")  # again after the answers: no longer open
        versions = client.post("/artifacts/filter", json={
            "artifacts": {"key": {"any_": ["feedback-tiny"]}}}).json()
        assert len(versions) == 2  # the resumed run, started again from the top, announced once
        assert run_id not in feedback and "data:image/png;base64," in feedback
        assert "| 2026-W02 | 1 | 2 | 1 | 1 | 0.50 |" in feedback  # one confirmed, one dismissed

        # Nobody answers: the server fails the run when the timeout passes; nothing written.
        expiring = start_review(client, deployment, timeout_hours=3 / 3600)
        wait_for(lambda: state_is(client, expiring, "PAUSED"), 180, "second review", procs)
        assert f"/runs/flow-run/{expiring})" in open_reviews_of(latest(client, "feedback-tiny"))
        failed = wait_for(lambda: state_is(client, expiring, "FAILED"), 120, "expiry", procs)
        assert "never resumed" in failed["state"]["message"]
        assert label_history(cfg).height == 3


def latest(client: httpx.Client, key: str) -> str:
    return {a["key"]: a for a in client.post("/artifacts/latest/filter", json={}).json()}[key][
        "data"]


def open_reviews_of(feedback: str) -> str:
    """The feedback artifact's open-reviews section."""
    return feedback.split("## Open reviews")[1].split("\n## ")[0]


def _deployment(client: httpx.Client) -> dict | None:
    r = client.get("/deployments/name/nightowl-review/review")
    return r.json() if r.status_code == 200 else None
