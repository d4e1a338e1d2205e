"""Stores that must keep their promises: a root nightowl cannot make conditional writes on is
refused when the config loads; an S3 endpoint that ignores If-None-Match / If-Match is
refused before its first compare-and-swap; AWS's 409 is retried like a lost race; a lost
race is told by its error code; a conditional write of any size stays conditional.

Against the real local S3 endpoint (tests/s3_server.py), faults by tests/fault_proxy.py."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from schemas.config import ConfigError, load_config
from tasks.store import Store, UnsupportedStoreError, lost_race
from tasks.versions import VersionRef, set_champion
from tests.fault_proxy import fault_proxy
from tests.s3_server import s3_endpoint
from tests.tiny import tiny_config, write_config

BUCKET = "nightowl-promises"


@pytest.fixture(scope="module")
def s3_url():
    with s3_endpoint(BUCKET) as url:
        yield url


def s3_store(endpoint: str) -> Store:
    return Store(f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}",
                 {"client_kwargs": {"endpoint_url": endpoint}})


@pytest.mark.parametrize("root", ["memory://nightowl", "gs://bucket/x", "gcs://bucket/x",
                                  "az://container/x", "abfs://container/x", "http://host/x"])
def test_a_root_without_conditional_writes_is_refused_at_config_load(tmp_path: Path, root: str):
    path = write_config(tmp_path, tiny_config(tmp_path, store={"root": root}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "field 'store.root'" in message
    assert f"{root.split('://')[0]}:// is not supported, use file:// or s3://" in message
    with pytest.raises(UnsupportedStoreError, match="is not supported"):
        Store(root)


@pytest.mark.parametrize("root", ["file:///tmp/x", "s3://bucket/prefix", "relative/store"])
def test_supported_roots_load(tmp_path: Path, root: str):
    assert load_config(write_config(tmp_path, tiny_config(tmp_path, store={"root": root}))
                       ).store.root == root


def test_a_server_that_ignores_conditions_is_refused_before_any_lost_update(s3_url):
    """An older S3-compatible server: every conditional PUT 'succeeds'. Refused, with a message
    that says what to do, and nothing but the removed probe was written."""
    with fault_proxy(s3_url, lambda n, method, path: "ignore-conditions") as proxy:
        store = s3_store(proxy.url)
        with pytest.raises(UnsupportedStoreError) as caught:
            set_champion(store, VersionRef("d", "pca", "v1"), "pr_auc", 0.5)
        with pytest.raises(UnsupportedStoreError):
            store.update_json("ledger.json", lambda current: {"n": 1})
    message = str(caught.value)
    assert "does not honour conditional writes" in message
    assert "second conditional create (If-None-Match: *) of the same key succeeded" in message
    assert "Use AWS S3 or an S3-compatible server that enforces" in message
    client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix=store.root + "/")


def test_the_same_server_with_conditions_passes_the_probe(s3_url):
    with fault_proxy(s3_url, lambda n, method, path: None) as proxy:
        store = s3_store(proxy.url)
        assert store.write_if("k.json", b"1", None)
        assert not store.write_if("k.json", b"2", None)
        requests = proxy.requests
        assert store.write_if("k2.json", b"1", None)
        assert proxy.requests == requests + 1  # probed once per store, not per write
    assert store.list("") == ["k.json", "k2.json"]  # the probe key is gone


def test_409_conditional_request_conflict_is_retried_like_a_lost_race(s3_url):
    """Every other PUT answers 409 (AWS: another conditional write on the key is in flight):
    4 writers x 5 increments still count to 20, none lost, none raised."""
    lock = threading.Lock()
    puts = [0]

    def plan(number: int, method: str, path: str) -> str | None:
        if method != "PUT" or "_nightowl/probe" in path:
            return None
        with lock:
            puts[0] += 1
            return "409" if puts[0] % 2 else None

    with fault_proxy(s3_url, plan) as proxy:
        store = s3_store(proxy.url)
        store.check_conditional_writes()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for _ in range(5):
                    store.update_json("counter.json", lambda c: {"n": (c or {"n": 0})["n"] + 1})
            except BaseException as err:  # noqa: BLE001 - surfaced below
                errors.append(err)

        threads = [threading.Thread(target=writer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert proxy.faults["409"] >= 10
    assert not errors, errors
    assert store.read_json("counter.json") == {"n": 20}


def _client_error(code: str, status: int, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def test_a_lost_race_is_told_by_its_code_not_its_wording():
    assert lost_race(_client_error("PreconditionFailed", 412, "Die Vorbedingung ist falsch"))
    assert lost_race(_client_error("ConditionalRequestConflict", 409, ""))
    assert lost_race(_client_error("", 412, ""))  # a bare 412 from a proxy
    wrapped = OSError(5, "At least one of the pre-conditions you specified did not hold")
    wrapped.__cause__ = _client_error("AccessDenied", 403, "pre-condition: no access")
    assert not lost_race(wrapped)
    assert not lost_race(_client_error("OperationAborted", 409, "pre-condition"))
    assert not lost_race(OSError("pre-condition failed"))


def test_a_conditional_write_too_large_for_one_s3fs_put_stays_conditional(s3_url):
    """s3fs uploads a body of 2 x its 50 MiB chunk or more in parts, and the parts path drops
    If-None-Match: the second create below would overwrite the first."""
    store = s3_store(s3_url)
    size = 100 * 2**20 + 1
    first = b"a" * size
    assert store.write_if("big.bin", first, None)
    assert not store.write_if("big.bin", b"b" * size, None)
    data, tag = store.read_tagged("big.bin")
    assert data == first
    assert not store.write_if("big.bin", b"c" * size, '"0123456789abcdef0123456789abcdef"')
    assert store.write_if("big.bin", b"d" * size, tag)
    assert store.read_bytes("big.bin")[:1] == b"d"
