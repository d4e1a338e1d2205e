"""Operators' labels: a Delta table per dataset, append-only, each answer written exactly once.

Why a table and not a JSON file: labels are evidence other teams audit and read with their
own engines (DuckDB, Spark, polars read Delta), several ways in write them (the review form
in the Prefect UI, the CLI, incident imports, a notebook) possibly at once, and a Delta
commit is atomic: a reader sees a whole batch of answers or none.

Append-only: an answer is never updated. A second answer about the same segment (another
operator, a changed mind) is a new row; `current_labels` takes the latest per segment and
`label_history` keeps them all (the audit trail). Exactly once: every request carries an
idempotency key; its hash is the row's `label_id`, and the batch is committed by one MERGE
that inserts only ids the table does not hold, so a re-submitted form, a retried task or a
re-imported export writes nothing twice.

Bad input writes nothing: every request of a batch is checked (verdict, period, dataset,
entity known in the validated layer or the config, data in the period) before the one
commit, and the error names each bad row and field.

This module imports no nightly or training code: training reads labels through it.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas import arrow as arrow_schemas
from schemas.config import DatasetConfig, Verdict
from tasks.common import store_for
from tasks.data import tables
from tasks.data.labelled import LabelledPeriod, OperatorLabels
from tasks.data.layer import entity_rows
from tasks.store import Store

log = logging.getLogger(__name__)

Source = Literal["ui", "cli", "import"]
COMMIT_ATTEMPTS = 20
MAX_ERRORS = 20  # bad rows named in one message; the count says how many more
ONE_TICK = timedelta(microseconds=1)  # a period's end is included; scans are half-open


class LabelError(ValueError):
    """Labels that cannot be written; the message names each bad row and field."""


def login_name() -> str:
    """Who runs this process: the default `who` of a label (a container may have no user)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class LabelRequest(BaseModel):
    """One answer about one period of one entity, as every way in hands it over."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entity: str = Field(..., min_length=1, max_length=200)
    start: datetime
    end: datetime = Field(..., description="included; equal to start for a single instant")
    verdict: Verdict
    who: str = Field(default_factory=login_name, min_length=1, max_length=200)
    note: str | None = Field(None, max_length=5000)
    segment: str | None = Field(None, max_length=500, description="the alert segment id it "
                                "answers; none: the period itself (`entity@start/end`)")
    key: str | None = Field(None, min_length=1, max_length=500, description="idempotency key: "
                            "the same key writes once; none: a new request")

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, moment: datetime) -> datetime:
        """Times without an offset are UTC, like every timestamp nightowl stores."""
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    @model_validator(mode="after")
    def _ordered(self) -> LabelRequest:
        if self.end < self.start:
            raise ValueError(f"end {self.end.isoformat()} is before start {self.start.isoformat()}")
        return self

    @property
    def segment_id(self) -> str:
        return self.segment or f"{self.entity}@{self.start.isoformat()}/{self.end.isoformat()}"


@dataclass(frozen=True)
class LabelsWritten:
    """What one commit did: answers asked for, rows new to the table, the table version."""

    table: str
    requested: int
    written: int
    version: int

    @property
    def duplicates(self) -> int:
        return self.requested - self.written


def labels_key(cfg: DatasetConfig) -> str:
    return f"labels/{cfg.name}"


def delta_location(store: Store, key: str) -> tuple[str, dict[str, str]]:
    """The URI and delta-rs storage options of a table at a store key (tasks.data.tables:
    the one conversion; the options may hold secrets: passed to delta-rs, never logged)."""
    return tables.table_uri(store, key), tables.storage_options(store)


def parse_request(data: dict[str, Any], where: str) -> LabelRequest:
    """A LabelRequest from loose values (a CSV row, a form answer); LabelError names `where`
    and every bad field."""
    try:
        return LabelRequest.model_validate(data)
    except ValidationError as err:
        raise LabelError("; ".join(_field_errors(err, where))) from None


def _field_errors(err: ValidationError, where: str) -> list[str]:
    found = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "end"  # the one whole-model rule: order
        found.append(f"{where}: field '{field}': {e['msg'].removeprefix('Value error, ')}")
    return found


def request_id(cfg: DatasetConfig, source: Source, key: str) -> str:
    """The label_id of a request: stable for (dataset, source, idempotency key)."""
    return hashlib.sha256(f"{cfg.name}\n{source}\n{key}".encode()).hexdigest()[:32]


def check_requests(store: Store, cfg: DatasetConfig, requests: Sequence[LabelRequest],
                   where: Sequence[str]) -> list[str]:
    """Why each request cannot be labelled: an entity neither in the validated layer nor in
    the config, or a period holding no data of it. [] when all are fine."""
    scope = cfg.for_group(None)
    held = entity_rows(store, scope)
    configured = {e for members in cfg.model.groups.values() for e in members}
    in_range: dict[tuple[datetime, datetime], dict[str, int]] = {}
    problems = []
    for req, place in zip(requests, where, strict=True):
        if req.entity not in held and req.entity not in configured:
            problems.append(f"{place}: field 'entity': {req.entity!r} is not an entity of "
                            f"dataset {cfg.name!r} (none in its validated rows or config)")
            continue
        period = (_naive(req.start), _naive(req.end) + ONE_TICK)
        if period not in in_range:
            in_range[period] = entity_rows(store, scope, *period)
        rows = in_range[period]
        # An entity the config names but that has sent nothing yet: any data of the dataset.
        has_data = rows.get(req.entity, 0) > 0 if req.entity in held else bool(rows)
        if not has_data:
            problems.append(f"{place}: fields 'start'/'end': no validated rows of "
                            f"{req.entity!r} between {req.start.isoformat()} and "
                            f"{req.end.isoformat()} (a period outside any data)")
    return problems


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def label_rows(cfg: DatasetConfig, requests: Sequence[LabelRequest], source: Source,
               recorded_at: datetime | None = None) -> pa.Table:
    """The table rows of a batch (one per distinct idempotency key), in the labels schema."""
    now = recorded_at or datetime.now(UTC)
    rows: dict[str, dict[str, Any]] = {}
    for req in requests:
        key = req.key or uuid.uuid4().hex
        label_id = request_id(cfg, source, key)
        rows.setdefault(label_id, {
            "label_id": label_id, "dataset": cfg.name, "entity": req.entity, "start": req.start,
            "end": req.end, "verdict": req.verdict, "source": source, "who": req.who,
            "recorded_at": now, "segment": req.segment_id, "note": req.note,
            "request": f"{source}:{key}"})
    return pa.Table.from_pylist(list(rows.values()), schema=arrow_schemas.labels_schema())


def record_labels(cfg: DatasetConfig, requests: Sequence[LabelRequest], source: Source,
                  where: Sequence[str] | None = None, store: Store | None = None) -> LabelsWritten:
    """Check every request, then commit them in one MERGE that skips known idempotency keys.

    `where` names each request in errors (default "label 1", "label 2", ...). LabelError,
    with nothing written, when any request is bad.
    """
    if not requests:
        raise LabelError(f"dataset {cfg.name!r}: no labels to record")
    store = store or store_for(cfg)
    where = list(where or [f"label {i + 1}" for i in range(len(requests))])
    problems = check_requests(store, cfg, requests, where)
    if problems:
        raise LabelError(_summary(cfg, problems))
    table = label_rows(cfg, requests, source)
    written, version = _merge_new(store, labels_key(cfg), table)
    log.info("%s: %d label(s) from %s, %d new (table version %d)", cfg.name, len(requests),
             source, written, version)
    return LabelsWritten(store.uri(labels_key(cfg)), len(requests), written, version)


def _summary(cfg: DatasetConfig, problems: list[str]) -> str:
    more = f"; and {len(problems) - MAX_ERRORS} more" if len(problems) > MAX_ERRORS else ""
    return (f"dataset {cfg.name!r}: nothing written, {len(problems)} bad label(s): "
            + "; ".join(problems[:MAX_ERRORS]) + more)


def _merge_new(store: Store, key: str, table: pa.Table) -> tuple[int, int]:
    """Insert the rows whose label_id the table lacks; (rows inserted, table version).

    A commit refused by a concurrent one is retried on a fresh snapshot; a retry after a
    commit that did land finds its ids present and inserts nothing.
    """
    uri, options = delta_location(store, key)
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            target = _open_or_create(uri, options)
            metrics = (target.merge(table, predicate="t.label_id = s.label_id",
                                    source_alias="s", target_alias="t")
                       .when_not_matched_insert_all().execute())
            return int(metrics.get("num_target_rows_inserted", 0)), target.version()
        except CommitFailedError:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0, 0.05 * (attempt + 1)))  # de-synchronise writers
    raise AssertionError("unreachable")


def _open_or_create(uri: str, options: dict[str, str]) -> DeltaTable:
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return DeltaTable.create(uri, schema=arrow_schemas.labels_schema(), mode="ignore",
                                 name="labels", storage_options=options)


def label_history(cfg: DatasetConfig, store: Store | None = None) -> pl.DataFrame:
    """Every answer ever recorded (the audit trail), oldest first; empty when none."""
    return _history_at(cfg, store)[0]


def _history_at(cfg: DatasetConfig, store: Store | None = None, at: int | None = None
                ) -> tuple[pl.DataFrame, int | None]:
    """(every answer, oldest first; the table version read: None when there is no table).
    `at`: that version of the table (time travel), else the latest."""
    store = store or store_for(cfg)
    uri, options = delta_location(store, labels_key(cfg))
    version: int | None
    try:
        delta = DeltaTable(uri, version=at, storage_options=options)
        table, version = delta.to_pyarrow_table(), delta.version()
    except TableNotFoundError:
        table, version = arrow_schemas.labels_schema().empty_table(), None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("recorded_at", "label_id"), version


def _latest(history: pl.DataFrame) -> pl.DataFrame:
    return (history.group_by("entity", "segment", maintain_order=True).last()
            .select(history.columns).sort("entity", "start"))


def current_labels(cfg: DatasetConfig, store: Store | None = None) -> pl.DataFrame:
    """The latest answer per (entity, segment): what the labels say now."""
    return _latest(label_history(cfg, store))


def training_labels(cfg: DatasetConfig, store: Store | None = None,
                    at: int | None = None) -> OperatorLabels:
    """The current anomaly / normal answers as the data stage takes them (`unsure` says
    nothing), with the labels table version they were read at (lineage). None of them when
    `[feedback] use_labels` is off. `at`: as they stood at that table version (a version's
    training set rebuilt: tasks.training.lineage)."""
    if not cfg.feedback.use_labels and at is None:
        return OperatorLabels()
    history, version = _history_at(cfg, store, at)
    now = _latest(history).filter(pl.col("verdict") != "unsure")
    return OperatorLabels(tuple(LabelledPeriod(r["entity"], r["start"], r["end"], r["verdict"])
                                for r in now.iter_rows(named=True)), version)


def label(cfg: DatasetConfig, entity: str, start: datetime | str, end: datetime | str,
          verdict: str, note: str | None = None, who: str | None = None,
          segment: str | None = None, key: str | None = None,
          source: Source = "cli", store: Store | None = None) -> LabelsWritten:
    """Record one answer (the CLI's `nightowl label` and a notebook's way in)."""
    values = {"entity": entity, "start": start, "end": end, "verdict": verdict, "note": note,
              "segment": segment, "key": key, "who": who or login_name()}
    where = f"label {entity} {start}..{end}"
    return record_labels(cfg, [parse_request(values, where)], source, [where], store)


def require_dataset(cfg: DatasetConfig, dataset: str) -> None:
    """The dataset a label names must be the config's: a typo must not label another one."""
    if dataset != cfg.name:
        raise LabelError(f"field 'dataset': unknown dataset {dataset!r}: the config describes "
                         f"{cfg.name!r}")


def as_requests(rows: Iterable[dict[str, Any]], where: Sequence[str]) -> list[LabelRequest]:
    """Parse many loose rows, collecting every bad one before failing (nothing written)."""
    requests, problems = [], []
    for row, place in zip(rows, where, strict=True):
        try:
            requests.append(parse_request(row, place))
        except LabelError as err:
            problems.append(str(err))
    if problems:
        raise LabelError("; ".join(problems[:MAX_ERRORS])
                         + (f"; and {len(problems) - MAX_ERRORS} more" if len(problems) > MAX_ERRORS
                            else ""))
    return requests
