"""The fault matrix: every kind of bad input a feed delivers, tried for real, one table.

Each kind is a short delivery (a good first file, then the faulty one or a second
source) through the real ingestion (polars, the GX suite, the local store). For every
kind the same invariants hold:

- the outcome and the message are the expected ones; every reason is one line that
  starts with the file name and is at most MAX_LINE characters (the detail is in
  validation.json);
- no row lost: the validated layer holds exactly the expected rows, and a quarantined
  file is kept byte for byte;
- no duplicate (entity, timestamp) anywhere in the validated layer;
- no secret written: the last delivery runs as a real Prefect flow (ephemeral API) whose
  config file holds planted credentials; they are nowhere in the store, the logs, or what
  Prefect recorded of the run (flow and task run parameters, inputs, states, log lines);
- a rerun changes nothing: a plain rerun (every stored byte identical), a rerun after every
  source was touched (listing changed, bytes the same: re-read and recognised, nothing but
  the ledger's listing changes) and a rerun after the ledger was lost (every file validated
  and filed again: the same rows, the same quarantined bytes, the same outcomes);
- the polars evaluation of the suite agrees with GX, expectation by expectation.

The injected faults (S3 errors, a failing webhook, kill -9, concurrent nights) are in
tests/test_faults.py; the counts for the report come from `test_matrix_counts`.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from prefect import flow

from flows.common import resolve_config
from schemas import suites
from schemas.config import DatasetConfig, load_config
from tasks.common import MAX_LINE, shown_name
from tasks.data import ingest, layer
from tasks.data.rules import suite_verdicts, with_step_column
from tasks.store import Store, sha256_bytes
from tests.test_ingest import FEATURES, START, csv_bytes, good_frame, parquet_bytes
from tests.tiny import write_config

SECRET = f"planted-secret-{uuid.uuid4().hex}"
DAY2 = START + timedelta(days=1)  # the second file's rows do not overlap the first's
BASE = "2026-01-05.csv"
N = 96  # rows of one good file: 2 entities x 48 half-hours


def cfg_for(raw: Path, store_root: str, limits: dict[str, Any] | None = None,
            **validation: Any) -> DatasetConfig:
    """The matrix's dataset, with secrets planted where credentials would live; written as a
    config file, as flows take it (a flow never takes the config itself)."""
    path = write_config(raw.parent, {
        "name": "matrix",
        "source": {"path": str(raw / "*"), "format": "auto", "storage_options": {"token": SECRET}},
        "columns": {"features": FEATURES},
        "validation": {"value_min": -1000.0, "value_max": 1000.0, **validation},
        "limits": limits or {},
        "splits": {"train": {"start": datetime(2026, 1, 5), "end": datetime(2026, 1, 6)},
                   "validation": [{"start": datetime(2026, 1, 6), "end": datetime(2026, 1, 7)}]},
        "families": [{"name": "dense_ae"}],
        "store": {"root": store_root, "storage_options": {"client_secret": SECRET}},
    })
    return load_config(path)


def text(frame: pl.DataFrame) -> str:
    return frame.write_csv()


def cell(frame: pl.DataFrame, column: str, row: int, value: Any) -> pl.DataFrame:
    values = frame.get_column(column).to_list()
    values[row] = value
    return frame.with_columns(pl.Series(column, values, strict=False))


def as_strings(frame: pl.DataFrame, column: str, row: int, value: str) -> bytes:
    return csv_bytes(cell(frame.with_columns(pl.col(column).cast(pl.String)), column, row, value))


def day2() -> pl.DataFrame:
    return good_frame(DAY2)


def swap_rows(frame: pl.DataFrame) -> bytes:
    order = list(range(frame.height))
    order[10], order[12] = order[12], order[10]  # same entity two steps apart (interleaved)
    return csv_bytes(frame[order])


def with_offset(frame: pl.DataFrame, hours: int) -> bytes:
    """The same instants written as local time with a UTC offset (+HH:00)."""
    local = frame.with_columns(
        (pl.col("timestamp") + timedelta(hours=hours)).dt.strftime(f"%Y-%m-%dT%H:%M:%S+{hours:02d}:00"))
    return csv_bytes(local)


def big_field_unreadable() -> bytes:
    return f'timestamp,entity,a,b,c,label\n{DAY2.isoformat()},"m0{"x" * 5_000_000},1,2,3,0\n'.encode()


@dataclass(frozen=True)
class Kind:
    """One bad (or tricky) delivery: the files in order, and what must come of the last one."""

    files: Callable[[], list[tuple[str, bytes]]]
    outcome: str  # "validated" | "quarantined"
    says: tuple[str, ...] = ()  # fragments of the last file's reason (or, validated: nothing)
    rows: int = 2 * N  # rows in the validated layer at the end
    validation: dict[str, Any] = field(default_factory=dict)
    duplicates: int = 0
    replaced: int = 0
    check: Callable[[pl.DataFrame], None] | None = None  # extra assertion on the layer
    limits: dict[str, Any] = field(default_factory=dict)  # [limits] of this delivery
    copied: bool = True  # quarantined: its bytes are copied (a file over file_bytes is not)


BIG_LINES = {"line_bytes": 16 << 20}  # the 5 MB kinds reach the rules behind the line bound
SMALL_INFLATE = {"decompressed_bytes": 1 << 20}
BASE_BYTES = len(csv_bytes(good_frame()))  # a bound the base file just fits


def bomb() -> bytes:
    """64 MiB of a valid-looking CSV that compresses ~1000x."""
    return b"timestamp,entity,a,b,c,label\n" + b"2026-01-06T00:00:00,m0,1,2,3,0\n" * (2 << 20)


def zstd(data: bytes) -> bytes:
    return pa.compress(data, "zstd", asbytes=True)


def wide(frame: pl.DataFrame, extra: int) -> pl.DataFrame:
    return frame.with_columns(pl.lit(0.0).alias(f"x{i}") for i in range(extra))


def then(name: str, data: bytes | Callable[[], bytes]) -> Callable[[], list[tuple[str, bytes]]]:
    """The good base file, then `name`."""
    return lambda: [(BASE, csv_bytes(good_frame())), (name, data() if callable(data) else data)]


def _later_file_won(layer: pl.DataFrame) -> None:
    assert layer["a"].min() >= 100.0


def _fewer_days(layer: pl.DataFrame) -> None:
    assert layer["timestamp"].dt.date().unique().sort().to_list() == [START.date()]


def _utc(layer: pl.DataFrame) -> None:
    assert layer["timestamp"].max() == DAY2 + timedelta(minutes=30 * 47)  # offsets removed


KINDS: dict[str, Kind] = {
    # -- encoding, framing, delimiters, headers --
    "empty file": Kind(then("2026-01-06.csv", b""), "quarantined", ("empty file (0 bytes)",), N),
    "header only": Kind(then("2026-01-06.csv", lambda: csv_bytes(day2().head(0))), "quarantined",
                        ("table failed rule 'at least 1 row'", "(0 rows)"), N),
    "binary garbage": Kind(then("2026-01-06.csv", bytes(range(256)) * 64), "quarantined",
                           ("unreadable CSV", "invalid utf-8"), N),
    "latin-1 encoding": Kind(then("2026-01-06.csv", lambda: text(cell(day2(), "entity", 3, "mé"))
                                  .encode("latin-1")), "quarantined", ("unreadable CSV",), N),
    "utf-8 BOM": Kind(then("2026-01-06.csv", lambda: b"\xef\xbb\xbf" + csv_bytes(day2())),
                      "validated"),
    "CRLF line endings": Kind(then("2026-01-06.csv", lambda: text(day2()).replace("\n", "\r\n")
                                   .encode()), "validated"),
    "mixed line endings": Kind(then("2026-01-06.csv", lambda: "".join(
        line + ("\r\n" if i % 2 else "\n") for i, line in enumerate(text(day2()).splitlines()))
        .encode()), "validated"),
    "semicolon delimiter": Kind(then("2026-01-06.csv", lambda: text(day2()).replace(",", ";")
                                     .encode()), "quarantined",
                                ("column 'entity' failed rule 'column exists'",), N),
    "tab delimiter": Kind(then("2026-01-06.csv", lambda: text(day2()).replace(",", "\t").encode()),
                          "quarantined", ("rule 'column exists'",), N),
    "missing column": Kind(then("2026-01-06.csv", lambda: csv_bytes(day2().drop("b"))),
                           "quarantined", ("column 'b'", "rule 'column exists'"), N),
    "renamed header": Kind(then("2026-01-06.csv", lambda: csv_bytes(day2().rename({"a": "A"}))),
                           "quarantined", ("column 'a'", "found columns ['timestamp'"), N),
    "duplicated header": Kind(then("2026-01-06.csv", lambda: text(day2()).replace(
        "label", "a", 1).encode()), "quarantined", ("rule 'unique column names'", "['a']"), N),
    "extra column": Kind(then("2026-01-06.csv", lambda: csv_bytes(day2().with_columns(
        pl.lit("x").alias("comment")))), "validated"),
    "truncated CSV": Kind(then("2026-01-06.csv", lambda: csv_bytes(day2())[:-7]), "quarantined",
                          ("rule 'not null'",), N),
    "foreign file (PNG)": Kind(then("2026-01-06.csv", b"\x89PNG\r\n\x1a\n" + bytes(200)),
                               "quarantined", ("rule 'column exists'",), N),
    # -- types --
    "string in numeric": Kind(then("2026-01-06.csv", lambda: as_strings(day2(), "b", 70, "oops")),
                              "quarantined", ("column 'b'", "rule 'numeric'", "'oops'"), N),
    "unparseable timestamp": Kind(then("2026-01-06.csv", lambda: as_strings(
        day2(), "timestamp", 4, "yesterday")), "quarantined",
        ("column 'timestamp'", "rule 'parses as datetime'", "'yesterday'"), N),
    "epoch seconds as timestamp": Kind(then("2026-01-06.csv", lambda: csv_bytes(day2().with_columns(
        pl.col("timestamp").dt.epoch("s")))), "quarantined", ("rule 'parses as datetime'",), N),
    "label as text": Kind(then("2026-01-06.csv", lambda: as_strings(day2(), "label", 2, "yes")),
                          "quarantined", ("column 'label'", "rule 'label in [0, 1]'"), N),
    "label not in set": Kind(then("2026-01-06.csv", lambda: csv_bytes(cell(day2(), "label", 2, 7))),
                             "quarantined", ("rule 'label in [0, 1]'", "[7]"), N),
    "parquet with wrong types": Kind(then("2026-01-06.parquet", lambda: parquet_bytes(
        day2().with_columns(pl.col("c").cast(pl.String)))), "quarantined",
        ("column 'c'", "rule 'numeric'"), N),
    "parquet with int features": Kind(then("2026-01-06.parquet", lambda: parquet_bytes(
        day2().with_columns(pl.col("a").cast(pl.Int32)))), "validated"),
    "truncated parquet": Kind(then("2026-01-06.parquet", lambda: parquet_bytes(day2())[:500]),
                              "quarantined", ("unreadable PARQUET",), N),
    # -- nulls --
    "empty cell": Kind(then("2026-01-06.csv", lambda: csv_bytes(cell(day2(), "a", 5, None))),
                       "quarantined", ("column 'a'", "rule 'not null'", "1 of 96 rows"), N),
    "NaN": Kind(then("2026-01-06.csv", lambda: csv_bytes(cell(day2(), "a", 5, float("nan")))),
                "quarantined", ("column 'a'", "rule 'not null'"), N),
    "null entity": Kind(then("2026-01-06.csv", lambda: csv_bytes(cell(day2(), "entity", 9, None))),
                        "quarantined", ("column 'entity'", "rule 'not null'"), N),
    "null timestamp": Kind(then("2026-01-06.csv", lambda: csv_bytes(cell(day2(), "timestamp", 9,
                                                                           None))),
                           "quarantined", ("column 'timestamp'", "rule 'not null'"), N),
    # -- ranges --
    "+inf": Kind(then("2026-01-06.csv", lambda: csv_bytes(cell(day2(), "c", 7, float("inf")))),
                 "quarantined", ("rule 'finite value in [-1000, 1000]'", "e.g. [inf]"), N),
    "-inf": Kind(then("2026-01-06.csv", lambda: csv_bytes(cell(day2(), "c", 7, float("-inf")))),
                 "quarantined", ("rule 'finite value in [-1000, 1000]'", "-inf"), N),
    "out of bounds": Kind(then("2026-01-06.parquet", lambda: parquet_bytes(cell(day2(), "a", 3,
                                                                                5000.0))),
                          "quarantined", ("column 'a'", "5000.0"), N),
    # -- keys and order --
    "duplicate key in batch": Kind(then("2026-01-06.csv", lambda: csv_bytes(
        pl.concat([day2(), day2()[3:4]]).sort("entity", "timestamp"))), "quarantined",
        ("columns ['entity', 'timestamp']", "rule 'unique key (entity, timestamp)'"), N),
    "out of order": Kind(then("2026-01-06.csv", lambda: swap_rows(day2())), "quarantined",
                         ("rule 'strictly increasing per entity'", "m"), N),
    # -- time --
    "far future (year 2100)": Kind(then("2100-01-01.csv", lambda: csv_bytes(good_frame(
        datetime(2100, 1, 1)))), "quarantined", ("column 'timestamp'", "rule 'not after now + 24h'",
                                                 "2100-01-01"), N),
    "before the dataset start": Kind(then("2025-06-01.csv", lambda: csv_bytes(good_frame(
        datetime(2025, 6, 1)))), "quarantined", ("rule 'not before 2026-01-01 00:00:00'",), N,
        validation={"not_before": "2026-01-01T00:00:00"}),
    "UTC offsets": Kind(then("2026-01-06.csv", lambda: with_offset(day2(), 2)), "validated",
                        check=_utc),
    # -- across batches --
    "re-sent under another name": Kind(lambda: [(BASE, csv_bytes(good_frame())),
                                                ("2026-01-05-resend.csv", csv_bytes(good_frame()))],
                                       "validated", rows=N, duplicates=N),
    "time-zone overlap": Kind(lambda: [(BASE, csv_bytes(good_frame())),
                                       ("2026-01-05-cet.csv", with_offset(good_frame(), 1))],
                              "validated", rows=N, duplicates=N),
    "partial overlap": Kind(lambda: [(BASE, csv_bytes(good_frame())), ("2026-01-05-late.csv",
                                     csv_bytes(pl.concat([good_frame(), day2()]).filter(
                                         pl.col("timestamp") >= START + timedelta(hours=12))))],
                            "validated", rows=2 * N, duplicates=48),
    "conflicting values": Kind(lambda: [(BASE, csv_bytes(good_frame())), ("2026-01-05-fixed.csv",
                               csv_bytes(cell(good_frame(), "a", 4, 999.0)))], "quarantined",
                               ("rule 'unique key (entity, timestamp) across sources'",
                                "1 of 96 rows", "2026-01-05.csv"), N),
    "conflicting values, replace": Kind(lambda: [(BASE, csv_bytes(good_frame())), (
        "2026-01-05-fixed.csv", csv_bytes(good_frame().with_columns(pl.col("a") + 100.0)))],
        "validated", rows=N, replaced=N, validation={"on_conflict": "replace"},
        check=_later_file_won),
    "corrected re-delivery, fewer days": Kind(lambda: [(BASE, csv_bytes(good_frame())), (
        BASE, csv_bytes(good_frame().filter(pl.col("timestamp") < DAY2.replace(hour=0)))),
    ], "validated", rows=48, check=_fewer_days),
    "corrected re-delivery, new values": Kind(lambda: [(BASE, csv_bytes(good_frame())), (
        BASE, csv_bytes(good_frame().with_columns(pl.col("a") + 100.0)))], "validated", rows=N,
        check=_later_file_won),
    # -- oversized --
    "5 MB field, unreadable": Kind(then("2026-01-06.csv", big_field_unreadable), "quarantined",
                                   ("unreadable CSV", "chars cut"), N, limits=BIG_LINES),
    "5 MB field in a number": Kind(then("2026-01-06.csv", lambda: as_strings(
        day2(), "a", 1, "9" * 5_000_000 + "x")), "quarantined", ("rule 'numeric'", "..."), N, limits=BIG_LINES),
    "5 MB entity name": Kind(then("2026-01-06.csv", lambda: csv_bytes(cell(day2(), "entity", 0,
                                                                            "m" * 5_000_000))),
                             "quarantined", ("rule 'at most 200 characters'",), N,
                             limits=BIG_LINES),
    "5 MB header name": Kind(then("2026-01-06.csv", lambda: text(day2()).replace(
        "label", "l" * 5_000_000, 1).encode()), "quarantined", ("column 'label'",), N,
        limits=BIG_LINES),
    # -- bounds ([limits]): past one, quarantined naming the bound and its value --
    "oversize file (listed size)": Kind(then("2026-01-06.csv", lambda: csv_bytes(pl.concat(
        [day2(), good_frame(DAY2 + timedelta(days=1))]))), "quarantined",
        (f"failed bound 'limits.file_bytes = {BASE_BYTES}'", "bytes listed"), N,
        limits={"file_bytes": BASE_BYTES}, copied=False),
    "file at the size bound": Kind(then("2026-01-06.csv", lambda: csv_bytes(day2())), "validated",
                                   limits={"file_bytes": len(csv_bytes(good_frame(DAY2)))}),
    "gzip CSV": Kind(then("2026-01-06.csv.gz", lambda: gzip.compress(csv_bytes(day2()))),
                     "validated"),
    "zstd CSV": Kind(then("2026-01-06.csv.zst", lambda: zstd(csv_bytes(day2()))), "validated"),
    "gzip CSV named .csv": Kind(then("2026-01-06.csv", lambda: gzip.compress(csv_bytes(day2()))),
                                "validated"),
    "gzip bomb": Kind(then("2026-01-06.csv.gz", lambda: gzip.compress(bomb(), 9)), "quarantined",
                      ("failed bound 'limits.decompressed_bytes = 1048576'",
                       "gzip expands past it"), N, limits=SMALL_INFLATE),
    "gzip bomb named .csv": Kind(then("2026-01-06.csv", lambda: gzip.compress(bomb(), 9)),
                                 "quarantined", ("limits.decompressed_bytes",), N,
                                 limits=SMALL_INFLATE),
    "zstd bomb": Kind(then("2026-01-06.csv.zst", lambda: zstd(bomb())), "quarantined",
                      ("failed bound 'limits.decompressed_bytes = 1048576'",
                       "zstd expands past it"), N, limits=SMALL_INFLATE),
    "bomb of one endless line": Kind(then("2026-01-06.csv.gz", lambda: gzip.compress(
        b"timestamp,entity,a,b,c,label\n" + b"9" * (64 << 20), 9)), "quarantined",
        ("failed bound 'limits.line_bytes = 1048576'",), N),
    "truncated gzip": Kind(then("2026-01-06.csv.gz", lambda: gzip.compress(csv_bytes(day2()))[:60]),
                           "quarantined", ("unreadable gzip stream",), N),
    "very wide CSV": Kind(then("2026-01-06.csv", lambda: csv_bytes(wide(day2(), 100))),
                          "quarantined", ("failed bound 'limits.columns = 64'",
                                          "106 columns in the header"), N, limits={"columns": 64}),
    "very wide parquet": Kind(then("2026-01-06.parquet", lambda: parquet_bytes(wide(day2(), 100))),
                              "quarantined", ("limits.columns = 64", "106 columns in the schema"),
                              N, limits={"columns": 64}),
    "columns at the bound": Kind(then("2026-01-06.csv", lambda: csv_bytes(day2())), "validated",
                                 limits={"columns": 6}),
    "parquet past its uncompressed bound": Kind(then("2026-01-06.parquet", lambda: parquet_bytes(
        day2())), "quarantined", ("limits.decompressed_bytes = 2048",
                                  "uncompressed per its metadata"), N,
        limits={"decompressed_bytes": 2048}),
    "very many entities": Kind(then("2026-01-06.csv", lambda: csv_bytes(day2().with_columns(
        pl.format("m{}", pl.int_range(pl.len())).alias("entity")))), "quarantined",
        ("failed bound 'limits.entities_per_batch = 10'", "96 distinct entities"), N,
        limits={"entities_per_batch": 10}),
    "entities at the bound": Kind(then("2026-01-06.csv", lambda: csv_bytes(day2())), "validated",
                                  limits={"entities_per_batch": 2}),
    "line too long": Kind(then("2026-01-06.csv", lambda: csv_bytes(cell(day2().with_columns(
        pl.lit("").alias("note")), "note", 40, "n" * 600))), "quarantined",
        ("failed bound 'limits.line_bytes = 512'",), N, limits={"line_bytes": 512}),
    "long last line without newline": Kind(then("2026-01-06.csv", lambda: csv_bytes(
        day2().with_columns(pl.lit("").alias("note")))[:-1] + b"n" * 600), "quarantined",
        ("limits.line_bytes = 512",), N, limits={"line_bytes": 512}),
    # -- odd file names: quarantined under a safe name, the name as delivered recorded --
    "backslash in the name": Kind(then("2026-01-06\\x.csv", lambda: csv_bytes(day2())),
                                  "quarantined", ("failed rule 'printable, no backslash'",), N),
    "newline in the name": Kind(then("2026-01-06\nx.csv", lambda: csv_bytes(day2())),
                                "quarantined", ("failed rule 'printable, no backslash'",), N),
    "control character in the name": Kind(then("2026-01-06\x01x.csv", lambda: csv_bytes(day2())),
                                          "quarantined", ("2026-01-06\\x01x.csv: file name",), N),
    "DEL in the name": Kind(then("2026-01-06\x7f.csv", lambda: csv_bytes(day2())), "quarantined",
                            ("failed rule 'printable, no backslash'",), N),
    "escape sequence in the name": Kind(then("2026-01-06\x1b[31m.csv", lambda: csv_bytes(day2())),
                                        "quarantined", ("\\x1b[31m.csv: file name",), N),
    "odd name and bad content": Kind(then("2026-01-06\n.csv", b""), "quarantined",
                                     ("failed rule 'printable, no backslash'",), N),
    "spaces and unicode in the name": Kind(then("2026-01-06 mesure é.csv",
                                                lambda: csv_bytes(day2())), "validated"),
    "question mark and hash in the name": Kind(then("2026-01-06?v=1#x.csv",
                                                    lambda: csv_bytes(day2())), "validated"),
}



@flow(name="matrix-delivery")
def delivery_flow(config: str) -> dict[str, Any]:
    """A night's ingestion as the product's flows run it: the config by its path, the real
    ingest task (its parameters, states and log lines are what Prefect records)."""
    return ingest.ingest_source(resolve_config(config)).to_json()


def prefect_records(flow_run_id: Any) -> tuple[str, list[str]]:
    """Everything Prefect recorded of one flow run (the run, its task runs, its log lines),
    as text, and the task runs' log messages."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # log lines are shipped in batches: send them now
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[flow_run_id])))
    dumped = [run.model_dump(mode="json"), *(t.model_dump(mode="json") for t in tasks),
              *(g.model_dump(mode="json") for g in logs)]
    return json.dumps(dumped), [g.message for g in logs if g.name == "prefect.task_runs"]


def deliver(raw: Path, store: Store, cfg: DatasetConfig, files: list[tuple[str, bytes]]
            ) -> tuple[list[ingest.BatchOutcome], dict[str, str], tuple[str, list[str]]]:
    """Each file as the feed would: written, then the source ingested (a night's run; the
    last one as a Prefect flow run). Also returns the validated layer as it was before the
    last file, and what Prefect recorded of the last run."""
    outcomes, before, recorded = [], {}, ("", [])
    for i, (name, data) in enumerate(files):
        before = {k: v for k, v in stored(store).items() if "/validated/" in k}
        (raw / name).write_bytes(data)
        if i < len(files) - 1:
            batches = ingest.ingest_urls(store, cfg, ingest.list_sources(cfg)).batches
        else:
            state = delivery_flow(cfg.file, return_state=True)
            batches = [ingest.BatchOutcome.from_dict(b) for b in state.result()["batches"]]
            recorded = prefect_records(state.state_details.flow_run_id)
        (outcome,) = [b for b in batches if b.source.endswith("/" + shown_name(name))]
        outcomes.append(outcome)
    return outcomes, before, recorded


def stored(store: Store) -> dict[str, str]:
    return {k: sha256_bytes(store.read_bytes(k)) for k in store.list("")}


def outcomes_of(store: Store, cfg: DatasetConfig) -> dict[str, tuple]:
    """Each source's outcome as a rerun reports it (what must not change)."""
    report = ingest.ingest_urls(store, cfg, ingest.list_sources(cfg))
    return {b.source: (b.status, b.rows, b.reasons) for b in report.batches}


def layer_rows(store: Store, cfg: DatasetConfig) -> pl.DataFrame:
    return layer.load_validated(store, cfg).sort("entity", "timestamp")


KEY = ["entity", "timestamp"]


def assert_reruns_change_nothing(raw: Path, store: Store, cfg: DatasetConfig,
                                 order_matters: bool = False) -> None:
    """A plain rerun, a rerun after every source was touched, a rerun after the ledger was lost."""
    before, rows = stored(store), layer_rows(store, cfg)
    outcomes = outcomes_of(store, cfg)  # plain: the listing is unchanged, nothing is read
    assert stored(store) == before

    for path in raw.iterdir():  # touched: same bytes, new mtime -> re-read and recognised
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 3600))
    assert outcomes_of(store, cfg) == outcomes
    after = stored(store)
    assert {k: v for k, v in after.items() if "/ingested/" not in k} == \
        {k: v for k, v in before.items() if "/ingested/" not in k}

    store.delete_many([k for k in after if "/ingested/" in k])  # ledger lost: all filed again
    refiled = outcomes_of(store, cfg)  # (a reason quoting "now" may differ: not its rule count)
    assert {u: (o[0], o[1], len(o[2])) for u, o in refiled.items()} == \
        {u: (o[0], o[1], len(o[2])) for u, o in outcomes.items()}
    if order_matters:  # "the later delivery wins" is decided again, in listing order
        assert layer_rows(store, cfg).select(KEY).equals(rows.select(KEY))
    else:
        assert layer_rows(store, cfg).equals(rows)
    copies = {k: v for k, v in before.items()
              if "/quarantine/" in k and not k.endswith("/validation.json")}
    assert {k: v for k, v in stored(store).items() if k in copies} == copies


def gx_verdicts(cfg: DatasetConfig, frame: pl.DataFrame) -> list[bool]:
    """GX's success per expectation, in suite order."""
    present = [c for c in (cfg.columns.timestamp, cfg.columns.entity, *cfg.columns.features,
                           cfg.columns.label) if c in frame.columns] + [suites.STEP_COLUMN]
    vd = suites.validation_definition(cfg)
    with suites.gx_lock():
        result = vd.run(batch_parameters={"dataframe": frame.select(present).to_pandas()})
    order = suites.expectation_order(vd)
    return [r.success for r in sorted(result.results, key=lambda r: order[r.expectation_config.id])]


@pytest.mark.parametrize("kind", list(KINDS))
def test_fault_matrix(kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                      prefect_harness: None) -> None:
    spec = KINDS[kind]
    raw = tmp_path / "raw"
    raw.mkdir()
    cfg = cfg_for(raw, f"file://{tmp_path}/store", spec.limits, **spec.validation)
    assert SECRET in Path(cfg.file).read_text()  # the flow run's config file holds it
    store = Store(cfg.store.root, cfg.store.storage_options)
    files = spec.files()
    caplog.set_level(logging.DEBUG)

    outcomes, earlier, (recorded, task_logs) = deliver(raw, store, cfg, files)
    last, (name, data) = outcomes[-1], files[-1]

    assert last.status == spec.outcome, (last.status, last.reasons)
    assert all(b.status == "validated" for b in outcomes[:-1])
    if spec.outcome == "quarantined":
        assert any(all(s in r for s in spec.says) for r in last.reasons), last.reasons
        assert all(r.startswith(f"{shown_name(name)}: ") and r.isprintable() and len(r) <= MAX_LINE
                   for r in last.reasons), last.reasons
        assert last.reason is not None and len(last.reason) <= MAX_LINE
        if spec.copied:
            copy, report_key = last.keys
            assert store.read_bytes(copy) == data  # kept byte for byte, under a safe name
            assert ingest.SAFE_FILE_NAME.fullmatch(copy.rsplit("/", 1)[-1]), copy
        else:
            (report_key,) = last.keys
        report = json.loads(store.read_bytes(report_key))
        assert report["reasons"] == last.reasons
        assert report["source_name"] == name  # the name as delivered
        assert report.get("copied", True) is spec.copied
        assert {k: v for k, v in stored(store).items() if "/validated/" in k} == earlier
    assert (last.duplicates, last.replaced) == (spec.duplicates, spec.replaced)

    rows = layer.load_validated(store, cfg)
    assert rows.height == spec.rows  # no row lost, none added twice
    assert rows.select("entity", "timestamp").is_duplicated().sum() == 0
    if spec.check:
        spec.check(rows)

    assert task_logs and json.dumps(cfg.file) in recorded  # Prefect recorded the run, its logs
    written = (b"".join(store.read_bytes(k) for k in store.list("")) + caplog.text.encode()
               + recorded.encode())
    assert SECRET.encode() not in written
    assert all(len(m) <= MAX_LINE for m in task_logs)
    assert all(len(r.getMessage()) <= MAX_LINE for r in caplog.records
               if r.name.startswith("tasks."))

    assert_reruns_change_nothing(raw, store, cfg, spec.validation.get("on_conflict") == "replace")

    try:  # both engines of the suite agree on every expectation
        frame = ingest.parse_batch(cfg, data, name)
    except (ingest.BatchReadError, ingest.limits.OverLimit):
        frame = None
    if frame is not None:
        stepped = with_step_column(cfg, frame)
        assert suite_verdicts(cfg, stepped) == gx_verdicts(cfg, stepped)


def test_the_matrix_covers_the_promised_ground() -> None:
    assert len(KINDS) >= 60
    assert {k.outcome for k in KINDS.values()} == {"validated", "quarantined"}
    assert sum(k.duplicates > 0 for k in KINDS.values()) >= 3  # cross-batch duplicates
