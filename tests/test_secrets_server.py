"""No secret reaches Prefect: against a real `prefect server`, `nightowl train` and `nightowl
score` (subprocesses, as a user runs them) on a config with a DISTINCT planted secret in every
place a user may put one, then every flow run's and task run's record (parameters, task
inputs, states), every artifact, every log line and every event the server holds is read
back through its REST API and searched for each secret.

(A block's name is in Prefect's own events about that block, created and loaded: the
server keeps the document under its name, so those events are not counted.)

Where the secrets are: the source's storage_options, the store's storage_options, the name
of the store's credentials block and the secret key in it, the name of the alert webhook's
Secret block and the token in the webhook URL it holds. Each secret is used for real: the
store is S3 (moto) reached with the block's keys, the webhook receives the night's alerts.

Slow (a server and two CLI runs: 2-7 min on a loaded 2-core machine): `make test-all`.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.prefect_server import BIN, every_record, running_server
from tests.s3_server import FAKE_ENV, s3_endpoint
from tests.tiny import NIGHTS, tiny_config, write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BUCKET = "nightowl-secrets"


def planted(where: str) -> str:
    """A recognisable secret, distinct per place (block names allow lowercase and dashes)."""
    return f"planted-{where}-{uuid.uuid4().hex[:12]}"


SECRETS = {name: planted(name) for name in (
    "source-option", "store-option", "store-block-name", "store-block-key", "hook-block-name",
    "hook-token")}
KEY_ID = "AKIANIGHTOWLSECRETS"
SAVE_BLOCKS = """
import sys
from prefect.blocks.system import Secret
from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters
key_id, key, endpoint, store_block, hook_url, hook_block = sys.argv[1:]
AwsCredentials(aws_access_key_id=key_id, aws_secret_access_key=key, region_name="us-east-1",
               aws_client_parameters=AwsClientParameters(endpoint_url=endpoint)).save(store_block)
Secret(value=hook_url).save(hook_block)
"""


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[bytes]]]:
    """A local HTTP endpoint that records every POST body (the alert webhook's far end)."""
    bodies: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()




def _events(client: httpx.Client) -> list[dict]:
    """Every event the server recorded (Prefect's event feed: run states, artifacts, ...)."""
    response = client.post("/events/filter", json={
        "filter": {"occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50}).json()
    events = list(response["events"])
    while response.get("next_page"):
        response = client.get(response["next_page"]).json()
        events += response["events"]
    return events


def block_event(record: dict) -> bool:
    """Prefect's own events about a block document (created, loaded) name it: the server
    keeps the document under that name by design; nothing of nightowl's may."""
    return str(record.get("event", "")).startswith("prefect.block")


def test_no_secret_reaches_prefect(tmp_path):
    from schemas.config import parse_config
    from tasks.data.synthetic import materialize

    night = NIGHTS[1]
    with (s3_endpoint(BUCKET) as s3_url, webhook_receiver() as (hook, posts),
          running_server(tmp_path) as server):
        for name in [*FAKE_ENV, "NIGHTOWL_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL",
                     "NIGHTOWL_ALERT_WEBHOOK_URL"]:
            server.env.pop(name, None)  # the config's blocks are the only credentials
        server.env["AWS_EC2_METADATA_DISABLED"] = "true"
        data = tiny_config(
            tmp_path, store_root=f"s3://{BUCKET}/secrets",
            store={"credentials_block": SECRETS["store-block-name"],
                   "storage_options": {"secret": SECRETS["store-option"]}},  # the block's wins
            alerts={"webhook_secret_block": SECRETS["hook-block-name"]},
            threshold={"percentile": 50.0},  # half the night alerts: the webhook is used
            training={"epochs": 4, "patience": 4})
        data["source"]["storage_options"] = {"planted_option": SECRETS["source-option"]}
        data["source"]["synthetic"]["corrupt_deliveries"] = 1  # a quarantine report too
        materialize(parse_config(data).source.synthetic, data["source"]["path"])
        config = write_config(tmp_path, data)
        run = {"env": server.env, "cwd": tmp_path, "text": True, "capture_output": True,
               "timeout": 600}
        subprocess.run([str(BIN / "python"), "-c", SAVE_BLOCKS, KEY_ID, SECRETS["store-block-key"],
                        s3_url, SECRETS["store-block-name"],
                        f"{hook}/services/{SECRETS['hook-token']}?sig={SECRETS['hook-token']}",
                        SECRETS["hook-block-name"]], check=True, **run)
        trained = subprocess.run([str(BIN / "nightowl"), "train", "-c", config], **run)
        assert trained.returncode == 0, trained.stderr[-3000:]
        scored = subprocess.run([str(BIN / "nightowl"), "score", night.isoformat(), "-c", config],
                                **run)
        assert scored.returncode == 0, scored.stderr[-3000:]

        client = server.client
        records = {kind: every_record(client, f"/{kind}/filter")
                   for kind in ("flow_runs", "task_runs", "artifacts", "logs")}
        records["events"] = _events(client)

    # The secrets were used for real, and the search looks at real records.
    assert posts, ["the webhook received no alert: its secret was never exercised",
                   *(r["message"] for r in records["logs"] if "alert" in r["message"])]
    assert len(records["task_runs"]) > 10 and len(records["logs"]) > 20
    assert len(records["artifacts"]) > 5 and len(records["events"]) > 20
    leaks = {where: [(kind, r.get("event") or r.get("key") or r.get("name"))
                     for kind, found in records.items() for r in found if secret in json.dumps(r)
                     and not (where.endswith("block-name") and block_event(r))]
             for where, secret in SECRETS.items()}
    assert leaks == {where: [] for where in SECRETS}
    flows = {r["name"]: r for r in records["flow_runs"]}
    names = {r["flow_id"] for r in records["flow_runs"]}
    assert len(names) >= 4  # train, candidates, nightly, score-night
    subflow_params = [r["parameters"] for r in records["flow_runs"]
                      if "settings" in json.dumps(r["parameters"])]
    assert len(subflow_params) == 2, [list(p) for p in (r["parameters"] for r in flows.values())]
    assert all(p_["settings"]["name"] == "tiny" for p in subflow_params for p_ in p.values()
               if isinstance(p_, dict) and "settings" in p_)

