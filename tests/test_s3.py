"""Object storage: the store and the whole pipeline against a real S3 endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import uuid

import boto3
import pytest

from tasks.common import store_for
from tasks.store import Store, StoreError, s3_options_from_block
from tasks.versions import ChampionConflict, VersionRef, read_champion, set_champion

BUCKET = "nightowl-test"
BLOCK_KEY_ID = "AKIANIGHTOWLBLOCK"
BLOCK_SECRET = "PLANTED-secret-9f4e71c2-do-not-leak"  # recognisable, so a grep finds any copy


@pytest.fixture
def s3_store(s3_url) -> Store:
    return Store(f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}")


def _race(store: Store, threads: int, each: int, use_generation: bool) -> None:
    """`threads` writers each promote `each` versions at the same time."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        barrier.wait()
        try:
            for j in range(each):
                ref = VersionRef("race", "dense_ae", f"t{i}-{j}")
                while True:
                    current = read_champion(store, "race")
                    gen = current["generation"] if current and use_generation else None
                    if use_generation and current is None:
                        gen = 0
                    try:
                        set_champion(store, ref, "pr_auc", 0.5, expected_generation=gen)
                        break
                    except ChampionConflict:
                        continue
        except BaseException as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors


@pytest.mark.parametrize("use_generation", [True, False], ids=["expected-generation", "retry"])
def test_concurrent_champion_registrations_lose_none(s3_store, use_generation):
    _race(s3_store, threads=6, each=4, use_generation=use_generation)
    pointer = read_champion(s3_store, "race")
    assert pointer["generation"] == 24
    # Bucket versioning keeps every write: exactly one per registration, generations 1..24.
    client = boto3.client("s3", endpoint_url=_endpoint(), region_name="us-east-1")
    key = s3_store.path("models/race/CHAMPION.json").split("/", 1)[1]
    versions = client.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"]
    generations = sorted(
        json.loads(client.get_object(Bucket=BUCKET, Key=key, VersionId=v["VersionId"])["Body"].read())[
            "generation"]
        for v in versions
    )
    assert generations == list(range(1, 25))


def test_stale_expected_generation_is_refused(s3_store):
    ref = VersionRef("race", "dense_ae", "a")
    set_champion(s3_store, ref, "pr_auc", 0.5)
    with pytest.raises(ChampionConflict, match="generation is 1, expected 0"):
        set_champion(s3_store, ref, "pr_auc", 0.6, expected_generation=0)


def test_write_if_is_conditional(s3_store):
    assert s3_store.write_if("k.json", b"1", None)
    assert not s3_store.write_if("k.json", b"2", None)
    data, tag = s3_store.read_tagged("k.json")
    assert data == b"1"
    assert not s3_store.write_if("k.json", b"3", '"0000"')
    assert s3_store.write_if("k.json", b"4", tag)
    assert s3_store.read_bytes("k.json") == b"4"
    assert "testing" not in repr(s3_store)


def _endpoint() -> str:
    import os

    return os.environ["NIGHTOWL_S3_ENDPOINT_URL"]


def test_pipeline_end_to_end_on_s3(s3_url, prefect_harness, tmp_path, monkeypatch, capfd, caplog):
    """Train and score a night with the store root on S3 (the same code path as file://),
    credentials and endpoint only from a prefect-aws block: every plot and link in the UI's
    artifacts loads over HTTP, and the block's secret is written nowhere."""
    import httpx
    import polars as pl
    import torch
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from flows.nightly import nightly_flow
    from flows.train import train_flow
    from schemas.config import parse_config
    from tasks.data.synthetic import materialize
    from tasks.versions import champion_ref, load_model
    from tests.artifacts import (
        everything_recorded,
        image_urls,
        latest_artifacts,
        link_urls,
        png_at,
    )
    from tests.tiny import NIGHTS, tiny_config, write_config

    torch.set_num_threads(2)
    block = f"nightowl-s3-{uuid.uuid4().hex[:6]}"
    AwsCredentials(aws_access_key_id=BLOCK_KEY_ID, aws_secret_access_key=BLOCK_SECRET,
                   region_name="us-east-1",
                   aws_client_parameters=AwsClientParameters(endpoint_url=s3_url)).save(block)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "NIGHTOWL_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name)  # only the block can make this run work
    root = f"s3://{BUCKET}/e2e-{uuid.uuid4().hex[:6]}"
    data = tiny_config(tmp_path, store_root=root, store={"credentials_block": block})
    data["source"]["synthetic"]["corrupt_deliveries"] = 1
    materialize(parse_config(data).source.synthetic, data["source"]["path"])
    config = write_config(tmp_path, data)

    training = train_flow(config)
    night = nightly_flow(config, NIGHTS[0])

    store = Store(root, {"key": BLOCK_KEY_ID, "secret": BLOCK_SECRET,
                         "client_kwargs": {"endpoint_url": s3_url}})
    assert store.uri("x").startswith("s3://")
    pointer = read_champion(store, "tiny")
    assert pointer["version"] == training["champion"]["version"]
    loaded = load_model(store, champion_ref(pointer), torch.device("cpu"))  # sha256-verified
    assert loaded.ref.version == pointer["version"]
    (key,) = night["scoring"]["keys"]
    scores = pl.from_arrow(store.read_parquet(key))
    assert scores.height == 48 and scores["model_version"].unique().to_list() == [pointer["version"]]
    assert store.exists("drift/tiny/date=2026-01-09/report.json")
    assert store.exists("alerts/tiny/date=2026-01-09/alerts.jsonl")
    assert not list((tmp_path / "store").glob("*"))  # nothing leaked to a local store

    # The UI: plots are presigned URLs a browser loads; links open the objects.
    keys = ["train-tiny-report", "train-tiny-dense-ae", "train-tiny-champion", "nightly-tiny",
            "nightly-tiny-scores"]
    artifacts = latest_artifacts(keys)
    images = [url for key in keys for url in image_urls(artifacts[key].data)]
    assert len(images) >= 4 and all(u.startswith(s3_url) and "X-Amz-Signature=" in u
                                    for u in images)
    for url in images:
        png_at(url)
    for key in ("train-tiny-champion", "nightly-tiny-scores"):
        (link,) = link_urls(artifacts[key].data)
        assert httpx.get(link).status_code == 200

    # The secret: in nothing Prefect recorded, no stored object, no output, no error.
    stored = b"".join(store.read_bytes(k) for k in store.list(""))
    nowhere = parse_config({**data, "store": {"root": f"s3://absent-{uuid.uuid4().hex[:6]}",
                                              "credentials_block": block}})
    with pytest.raises(OSError) as failure:
        store_for(nowhere).write_bytes("k", b"x")
    with pytest.raises(StoreError, match="not found") as no_block:
        s3_options_from_block(f"absent-{uuid.uuid4().hex[:6]}")
    out, err = capfd.readouterr()
    written = "\n".join([everything_recorded(), out, err, caplog.text, repr(failure.value),
                         str(no_block.value)])
    assert BLOCK_KEY_ID in written  # the access key id is not secret: signed URLs carry it
    assert BLOCK_SECRET not in written and BLOCK_SECRET.encode() not in stored
