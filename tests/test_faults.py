"""Injected faults: S3 answering 503, resetting connections (before and after a write
landed) and stalling past the read timeout, through tests/fault_proxy.py in front of the
local S3 server. The store's retries (botocore, s3fs) and its idempotent compare-and-swap
must turn every fault into the same result a fault-free run gives: no row lost, no
duplicate key, no lost promotion, no planted credential written anywhere."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path

import boto3
import polars as pl

from tasks.data import ingest, layer, tables
from tasks.store import Store
from tasks.versions import ChampionConflict, VersionRef, read_champion, set_champion
from tests.fault_proxy import FAULTS, every, fault_proxy
from tests.test_ingest import START, csv_bytes, good_frame, make_cfg

BUCKET = "nightowl-faults"
SECRET = f"planted-aws-secret-{uuid.uuid4().hex}"
TIMEOUTS = {"read_timeout": 1, "connect_timeout": 1,
            "retries": {"max_attempts": 10, "mode": "standard"}}


def s3_store(endpoint: str, prefix: str) -> Store:
    return Store(f"s3://{BUCKET}/{prefix}",
                 {"client_kwargs": {"endpoint_url": endpoint}, "config_kwargs": TIMEOUTS})


def every_object(endpoint: str, prefix: str) -> bytes:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = client.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix)
    versions = [v for page in pages for v in page.get("Versions", [])]
    return b"".join(client.get_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])
                    ["Body"].read() for v in versions)


def test_ingestion_through_s3_faults_files_exactly_what_a_clean_run_files(
        s3_url, tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    caplog.set_level(logging.INFO)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2026-01-05.csv").write_bytes(csv_bytes(good_frame()))
    (raw / "2026-01-06.csv").write_bytes(csv_bytes(good_frame(START.replace(day=6))))
    (raw / "2026-01-06-resend.csv").write_bytes(csv_bytes(good_frame(START.replace(day=6))))
    (raw / "2026-01-07.csv").write_bytes(b"timestamp,entity,a\nbroken,m0,x\n")
    cfg = make_cfg(raw / "*.csv")
    clean = s3_store(s3_url, "clean")
    expected = ingest.ingest_urls(clean, cfg, ingest.list_sources(cfg))

    with fault_proxy(s3_url, every(3)) as proxy:
        faulty = s3_store(proxy.url, "faulty")
        got = ingest.ingest_urls(faulty, cfg, ingest.list_sources(cfg))
        rerun = ingest.ingest_urls(faulty, cfg, ingest.list_sources(cfg))
    assert set(proxy.faults) == set(FAULTS) and sum(proxy.faults.values()) >= 10, proxy.faults

    assert [(b.status, b.rows) for b in got.batches] == \
        [(b.status, b.rows) for b in expected.batches]
    # the day file and its identical re-send are filed concurrently: which one finds the
    # other's rows (and counts them as duplicates) depends on which commits first
    assert got.rows_duplicate == expected.rows_duplicate == 96
    assert rerun.batches == got.batches
    rows = layer.load_validated(s3_store(s3_url, "faulty"), cfg)
    assert rows.equals(layer.load_validated(clean, cfg))  # nothing lost, nothing twice
    assert rows.height == 2 * 96 and rows.select("entity", "timestamp").is_duplicated().sum() == 0
    assert SECRET.encode() not in every_object(s3_url, "faulty") + caplog.text.encode()


def test_concurrent_promotions_through_s3_faults_lose_none(s3_url):
    """4 writers x 3 promotions each, every 3rd request failing: 12 generations, each once."""
    prefix = f"race-{uuid.uuid4().hex[:6]}"
    with fault_proxy(s3_url, every(3, ("503", "reset", "reset-after")), 2.5) as proxy:
        store = s3_store(proxy.url, prefix)
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def writer(i: int) -> None:
            barrier.wait()
            try:
                for j in range(3):
                    while True:
                        current = read_champion(store, "race")
                        try:
                            set_champion(store, VersionRef("race", "pca", f"w{i}-{j}"), "pr_auc",
                                         0.5, expected_generation=current["generation"]
                                         if current else 0)
                            break
                        except ChampionConflict:
                            continue
            except BaseException as err:  # noqa: BLE001 - surfaced below
                errors.append(err)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert proxy.faults["reset-after"] > 0  # some conditional PUTs landed unacknowledged
    assert read_champion(s3_store(s3_url, prefix), "race")["generation"] == 12
    client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    key = f"{prefix}/models/race/CHAMPION.json"
    versions = client.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"]
    generations = sorted(json.loads(client.get_object(Bucket=BUCKET, Key=key,
                                                      VersionId=v["VersionId"])["Body"].read())
                         ["generation"] for v in versions)
    assert generations == list(range(1, 13))  # every promotion exactly once, none lost


def test_overlapping_ingestions_at_once_through_s3_faults_end_as_one_after_the_other(
        s3_url, tmp_path: Path):
    """Two runs at once, each with its own client, over sources that overlap (a shared file and
    an identical re-send of another's day), every 4th request failing: the final table holds
    what one run after the other files, each row once, with every source that holds it."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2026-01-05.csv").write_bytes(csv_bytes(good_frame()))
    (raw / "2026-01-06.csv").write_bytes(csv_bytes(good_frame(START.replace(day=6))))
    (raw / "2026-01-06-resend.csv").write_bytes(csv_bytes(good_frame(START.replace(day=6))))
    cfg = make_cfg(raw / "*.csv")
    files = ingest.list_sources(cfg)
    first, second = files[:2], files[1:]  # both deliver 2026-01-06.csv
    clean = s3_store(s3_url, "sequential")
    ingest.ingest_urls(clean, cfg, first)
    ingest.ingest_urls(clean, cfg, second)

    prefix = f"together-{uuid.uuid4().hex[:6]}"
    errors: list[BaseException] = []
    with fault_proxy(s3_url, every(4, ("503", "reset", "reset-after"))) as proxy:
        barrier = threading.Barrier(2)

        def run(sources: list[ingest.SourceFile]) -> None:
            barrier.wait()
            try:
                ingest.ingest_urls(s3_store(proxy.url, prefix), cfg, sources)
            except BaseException as err:  # noqa: BLE001 - surfaced below
                errors.append(err)

        threads = [threading.Thread(target=run, args=(s,)) for s in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert proxy.faults["reset-after"] > 0
    together = s3_store(s3_url, prefix)
    assert layer.load_validated(together, cfg).equals(layer.load_validated(clean, cfg))
    key = layer.validated_key(cfg)

    def held(store: Store) -> pl.DataFrame:
        frame = pl.from_arrow(tables.open_table(store, key).to_pyarrow_table())
        return frame.with_columns(pl.col("sources").list.sort()).sort("entity", "timestamp")

    assert held(together).equals(held(clean)) and held(clean)["sources"].list.len().max() == 2
