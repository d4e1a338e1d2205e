"""Delta Lake tables in the project's store: where a table lives and how to reach it.

Why Delta: the validated rows, the nightly scores (and the labels, later) are read by
other teams' engines (DuckDB, Spark, polars). A Delta table gives them what nightowl's
own manifests gave only nightowl: a commit is one atomic log entry (a file created only
if absent, locally and on S3 through its conditional writes), so every reader sees a
whole snapshot or the one before, never half a batch or half a night; old snapshots
stay readable by version (time travel) until vacuumed.

Everything table-generic lives here (URI, storage options derived from the Store,
opening a snapshot, a transaction retried on commit conflicts, maintenance), so a new
table (labels) is a key and a schema, not new plumbing. No secret is ever logged: the
options are built for delta-rs and returned, never printed.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

import pyarrow as pa
from deltalake import ColumnProperties, DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from tasks.store import Store, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
COMMIT_ATTEMPTS = 30
ROW_GROUP_ROWS = 65_536


def writer_properties(schema: pa.Schema | None = None) -> WriterProperties:
    """zstd, and row groups of 64k rows: files are sorted by (entity, timestamp), so a reader
    of one entity skips every row group whose entity range misses it (a day of a 695-entity
    fleet is one file of ~1M rows: in one row group, an entity's read was the whole day).

    The floating-point columns of `schema` (sensor values, scores) are written without a
    dictionary: their values rarely repeat, so the writer filled a dictionary page, gave
    up and wrote them plain anyway; on a day of random-valued sensors that try made the
    commit ~3x slower and the file ~25% larger (benchmarks/RESULTS.md, issue 19).
    """
    plain = ColumnProperties(dictionary_enabled=False)
    floats = [] if schema is None else [f.name for f in schema if pa.types.is_floating(f.type)]
    return WriterProperties(compression="ZSTD", max_row_group_size=ROW_GROUP_ROWS,
                            column_properties={name: plain for name in floats} or None)


def in_row_groups(data: pa.Table) -> pa.RecordBatchReader:
    """`data` as a stream of row-group-sized batches for write_deltalake: delta-rs splits
    every batch it is given by partition (a copy of all its rows); in 64k-row pieces that
    copy stays in cache and overlaps the encoding (a 1M-row day: ~20% less commit time
    than one batch, benchmarks/RESULTS.md, issue 19)."""
    return pa.RecordBatchReader.from_batches(data.schema,
                                             data.to_batches(max_chunksize=ROW_GROUP_ROWS))


def table_uri(store: Store, key: str) -> str:
    """The URI delta-rs opens for a store key (a plain path locally, s3://bucket/... on S3)."""
    return store.path(key) if store.is_local else store.uri(key)


def storage_options(store: Store) -> dict[str, str]:
    """delta-rs options equivalent to the Store's s3fs ones: credentials, endpoint, region.

    `conditional_put = etag` makes delta-rs commit by S3's conditional PUT, which
    S3-compatible servers (MinIO, moto) support; no lock service is needed.
    """
    if store.is_local:
        return {}
    s3: dict[str, Any] = dict(store.fs.storage_options)
    client = dict(s3.get("client_kwargs") or {})
    options = {"conditional_put": "etag"}
    for ours, theirs in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"),
                         ("token", "AWS_SESSION_TOKEN")):
        if s3.get(ours):
            options[theirs] = str(s3[ours])
    endpoint = client.get("endpoint_url") or s3.get("endpoint_url")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = str(endpoint)
        if str(endpoint).startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    region = (client.get("region_name") or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION"))
    options["AWS_REGION"] = str(region or "us-east-1")
    return options


def open_table(store: Store, key: str, version: int | None = None) -> DeltaTable | None:
    """The table's latest snapshot (or `version`), read fresh from its log; None if absent."""
    try:
        return DeltaTable(table_uri(store, key), version=version,
                          storage_options=storage_options(store))
    except TableNotFoundError:
        if version is not None:
            raise StoreError(f"{store.uri(key)}: no Delta table to read version {version} of") \
                from None
        return None


def ensure_table(store: Store, key: str, schema: pa.Schema, partition_by: list[str]) -> None:
    """Create the table (empty, at version 0) unless it exists; losing that race is fine."""
    for n in range(COMMIT_ATTEMPTS):
        if open_table(store, key) is not None:
            return
        try:
            DeltaTable.create(table_uri(store, key), schema=schema, partition_by=partition_by,
                              mode="ignore", storage_options=storage_options(store))
            return
        except (CommitFailedError, OSError):  # a lost race, or a reply lost on the way
            if n == COMMIT_ATTEMPTS - 1:
                raise
            _back_off(n)


def transact(store: Store, key: str, attempt: Callable[[DeltaTable | None], T],
             max_attempts: int = COMMIT_ATTEMPTS,
             create: tuple[pa.Schema, list[str]] | None = None) -> T:
    """Run `attempt(snapshot)` until its commit is not refused by a concurrent one.

    `attempt` reads the snapshot it is given, decides, and commits against it (pass the
    DeltaTable to write_deltalake/merge/delete, so delta-rs checks for conflicts since
    that version); on CommitFailedError it runs again on a fresh snapshot. So does an I/O
    error (a connection reset on the commit's PUT): whether that commit landed or not,
    the fresh snapshot tells, and `attempt` must then find nothing left to write.
    `create` (schema, partition columns): an absent table is created empty first.
    """
    for n in range(max_attempts):
        try:
            table = open_table(store, key)
            if table is None and create is not None:
                ensure_table(store, key, *create)
                table = open_table(store, key)
            return attempt(table)
        except FileNotFoundError:
            raise  # nothing a retry can bring back
        except (CommitFailedError, OSError) as err:
            if n == max_attempts - 1:
                raise StoreError(f"{store.uri(key)}: commit still failing after "
                                 f"{max_attempts} attempts ({str(err).splitlines()[0]})") from err
            log.debug("%s: %s, attempt %d again", store.uri(key), type(err).__name__, n + 2)
        _back_off(n)
    raise AssertionError("unreachable")


def _back_off(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # de-synchronise competing writers


def version_of(store: Store, key: str) -> int | None:
    """The table's current version (None: no table yet)."""
    table = open_table(store, key)
    return None if table is None else table.version()


def tracked_keys(store: Store, key: str, table: DeltaTable) -> set[str]:
    """Store keys of the data files the snapshot names (anything else in its folder is not
    part of the table: a dead writer's file, or an older layout's)."""
    paths = pa.table(table.get_add_actions()).column("path").to_pylist()
    return {f"{key}/{unquote(p)}" for p in paths}


def maintain(store: Store, key: str, retention_hours: int) -> dict[str, Any]:
    """Compact small files, then vacuum files no snapshot younger than the window needs.

    Time travel reaches back `retention_hours`: a model's recorded training snapshot
    must stay rebuildable for as long as the model may be audited.
    """
    table = open_table(store, key)
    if table is None:
        return {"table": key, "skipped": "no table"}
    compacted = table.optimize.compact()
    table = open_table(store, key)
    assert table is not None
    removed = table.vacuum(retention_hours=retention_hours, dry_run=False,
                           enforce_retention_duration=False)
    return {"table": key, "version": table.version(),
            "files_added": compacted.get("numFilesAdded", 0),
            "files_removed": compacted.get("numFilesRemoved", 0), "vacuumed": len(removed)}
