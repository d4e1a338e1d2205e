"""The operator's cockpit against a real `prefect server`: `nightowl train` and `nightowl score`
as a user runs them (subprocesses), the store on S3 with credentials only in a prefect-aws
block; then, through the server's REST API, every artifact the UI shows exists with its key
and type, every plot URL in it loads as a PNG, every link opens, and the block's secret is in
nothing written (server log, command output, API records, store objects).

Slow (a server and two CLI runs: 2-7 min on a loaded 2-core machine), so `make test-all`
runs it; the default suite covers the same artifacts in-process (test_flow_e2e, test_report,
test_s3).
"""

from __future__ import annotations

import json
import subprocess
import uuid

import httpx
import pytest

from tests.artifacts import image_urls, link_urls, png_at
from tests.prefect_server import BIN, every_record, running_server
from tests.s3_server import FAKE_ENV, s3_endpoint
from tests.tiny import NIGHTS, tiny_config, write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BUCKET = "nightowl-ui-server"
KEY_ID = "AKIANIGHTOWLSERVER"
SECRET = "PLANTED-server-secret-3c9d0b7e"  # recognisable, so a grep finds any copy
SAVE_BLOCK = """
import sys
from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters
AwsCredentials(aws_access_key_id=sys.argv[1], aws_secret_access_key=sys.argv[2],
               region_name="us-east-1",
               aws_client_parameters=AwsClientParameters(endpoint_url=sys.argv[3])).save(sys.argv[4])
"""




def test_train_and_a_night_show_every_artifact_with_loadable_plots(tmp_path):
    from schemas.config import parse_config
    from tasks.data.synthetic import materialize

    block = f"nightowl-ui-{uuid.uuid4().hex[:6]}"
    night = NIGHTS[1]  # the night of the corrupt re-delivery: it lists a quarantined batch
    with s3_endpoint(BUCKET) as s3_url, running_server(tmp_path) as server:
        for name in [*FAKE_ENV, "NIGHTOWL_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"]:
            server.env.pop(name, None)  # the block is the only source of credentials
        server.env["AWS_EC2_METADATA_DISABLED"] = "true"
        data = tiny_config(tmp_path, store_root=f"s3://{BUCKET}/ui",
                           store={"credentials_block": block},
                           training={"epochs": 6, "patience": 6})
        data["source"]["synthetic"]["corrupt_deliveries"] = 1
        materialize(parse_config(data).source.synthetic, data["source"]["path"])
        config = write_config(tmp_path, data)
        run = {"env": server.env, "cwd": tmp_path, "text": True, "capture_output": True,
               "timeout": 600}
        subprocess.run([str(BIN / "python"), "-c", SAVE_BLOCK, KEY_ID, SECRET, s3_url, block],
                       check=True, **run)
        trained = subprocess.run([str(BIN / "nightowl"), "train", "-c", config], **run)
        assert trained.returncode == 0, trained.stderr[-3000:]
        scored = subprocess.run([str(BIN / "nightowl"), "score", night.isoformat(), "-c", config],
                                **run)
        assert scored.returncode == 0, scored.stderr[-3000:]

        client = server.client
        latest = {a["key"]: a for a in client.post("/artifacts/latest/filter", json={}).json()}
        (quarantine,) = [k for k in latest if k.startswith("quarantine-tiny-")]
        expected = {
            "train-tiny-candidates": "table", "train-tiny-report": "markdown",
            "train-tiny-dense-ae": "markdown", "train-tiny-champion": "markdown",
            "train-tiny-dense-ae-progress": "progress", "nightly-tiny": "markdown",
            "nightly-tiny-segments": "table", "nightly-tiny-scores": "markdown",
            quarantine: "markdown",
        }
        assert {k: latest[k]["type"] for k in expected} == expected

        plots = [url for key in ("train-tiny-report", "train-tiny-dense-ae", "nightly-tiny")
                 for url in image_urls(latest[key]["data"])]
        assert len(plots) == 5  # champion timeline; timeline, training, histogram; the night
        for url in plots:
            assert url.startswith(s3_url) and "X-Amz-Signature=" in url  # presigned
            png_at(url)
        links = [url for key in ("train-tiny-champion", "nightly-tiny-scores", quarantine)
                 for url in link_urls(latest[key]["data"])]
        assert len(links) == 3 and all(httpx.get(u).status_code == 200 for u in links)
        assert "failed rule 'not null'" in latest[quarantine]["data"]
        assert "## Quarantined batches" in latest["nightly-tiny"]["data"]
        progress = latest["train-tiny-dense-ae-progress"]
        assert progress["data"] == 100.0 and "epochs" in progress["description"]

        recorded = [json.dumps(every_record(client, f"/{kind}/filter"))
                    for kind in ("artifacts", "logs", "flow_runs", "task_runs")]
        import boto3

        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="y")
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for o in page.get("Contents", [])]
        stored = b"".join(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys)
        written = "\n".join([*recorded, server.log("server"), trained.stdout, trained.stderr,
                             scored.stdout, scored.stderr])
        assert KEY_ID in written and len(keys) > 20  # the greps looked at real content
        assert SECRET not in written and SECRET.encode() not in stored
