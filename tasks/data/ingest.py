"""Ingest raw batches: list the source once, skip what was filed, validate the rest,
then commit their rows to the validated layer exactly once or quarantine them untouched.

Why this shape:
- one source file is one batch; its ledger entry (`ingested/<source-id>.json`) records
  the listing metadata (size, mtime, ETag) and the sha256 of the bytes it was filed
  with, so a rerun skips a filed source before downloading a byte, and a corrected
  re-delivery (metadata changed) is fetched and validated again;
- rows are exactly-once across the validated Delta table, one commit per batch
  (tasks.data.layer): a re-delivery of a source replaces its rows (stale days included),
  rows another source already filed gain this source as evidence when identical and
  refuse the batch when different (or win, if configured);
- a bad batch never raises out of the pipeline and never touches validated data or
  models: it is copied byte for byte to quarantine with a report whose every line names
  the file, the column and the rule (at most 500 characters; the detail is in the report);
- new batches are validated concurrently (threads: polars releases the GIL);
- only I/O is retried (a validation failure is deterministic: retrying it is waste);
- a night ingests only its own files (and the day before, the window context), and
  reports entities whose row count is far from their usual volume.
"""

from __future__ import annotations

import contextvars
import io
import json
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from statistics import median
from typing import Any
from urllib.parse import urlsplit

import fsspec
import polars as pl
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas import arrow as arrow_schemas
from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, clip, run_logger, shown_name, shown_url, store_for
from tasks.data import layer, limits
from tasks.data.layer import dataset_prefix
from tasks.data.rules import ValidationOutcome, validate_frame, with_step_column  # noqa: F401
from tasks.store import Store, json_bytes, sha256_bytes

RAW_EXTENSIONS = {"csv": (".csv", ".csv.gz", ".csv.zst"), "parquet": (".parquet", ".pq")}
_partition_key = layer.partition_key  # the key helper other modules know by this name


class BatchReadError(ValueError):
    """A batch that cannot be parsed at all (empty, truncated, not CSV/Parquet); names the file."""


@dataclass
class BatchOutcome:
    """The fate of one batch, JSON-able via `to_dict()` for flow summaries and artifacts.

    `rows` are the batch's rows; `duplicates` of them were already filed by another
    source with identical values (kept once, both sources recorded); `replaced` keys of other sources were
    overwritten by this batch (only with `on_conflict = "replace"`).
    """

    source: str
    status: str  # "validated" | "quarantined"
    rows: int
    reason: str | None
    keys: list[str] = field(default_factory=list)
    batch_id: str = ""
    reasons: list[str] = field(default_factory=list)
    duplicates: int = 0
    replaced: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> BatchOutcome:
        return cls(**{k: v for k, v in record.items() if k in cls.__dataclass_fields__})


def batch_id_of(data: bytes) -> str:
    return sha256_bytes(data)[:16]


def source_id_of(url: str) -> str:
    """A source's identity is its URL: a re-delivery under the same name replaces it."""
    return batch_id_of(url.encode())


# -- listing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """One file of the source and the listing metadata that identifies its version."""

    url: str
    fingerprint: dict[str, Any] | None = None


FINGERPRINT_FIELDS = ("size", "mtime", "ETag", "LastModified", "etag", "md5Hash", "generation")


def fingerprint(info: dict[str, Any]) -> dict[str, Any]:
    """What a listing says about a file's version (local: size + mtime; S3: size + ETag)."""
    return {k: (v if isinstance(v, int | float) else str(v))
            for k, v in info.items() if k in FINGERPRINT_FIELDS and v is not None}


def _has_magic(path: str) -> bool:
    """fsspec's glob characters (its own helper is not public API)."""
    return any(ch in path for ch in "*?[")


def _wanted_extensions(cfg: DatasetConfig) -> tuple[str, ...]:
    if cfg.source.format == "auto":
        return RAW_EXTENSIONS["csv"] + RAW_EXTENSIONS["parquet"]
    return RAW_EXTENSIONS[cfg.source.format]


def list_sources(cfg: DatasetConfig) -> list[SourceFile]:
    """Expand `source.path` (file, directory, glob, or any fsspec URL) in ONE listing, with
    each file's metadata, sorted by URL.

    A glob that matches nothing is a quiet night (empty list, warning); a plain
    path that does not exist is a configuration mistake and raises.
    """
    fs, path = fsspec.core.url_to_fs(cfg.source.path, **cfg.source.storage_options)
    if _has_magic(path):
        found = fs.glob(path, detail=True)
    elif fs.isdir(path):
        wanted = _wanted_extensions(cfg)
        found = {p: i for p, i in fs.find(path, detail=True).items() if p.lower().endswith(wanted)}
    elif fs.isfile(path):
        found = {path: fs.info(path)}
    else:
        raise FileNotFoundError(
            f"dataset '{cfg.name}': source.path {shown_url(cfg.source.path)!r} does not exist"
        )
    files = {p: i for p, i in found.items() if i.get("type") == "file"}
    if not files:
        run_logger(__name__).warning("dataset '%s': no batches found at %s", cfg.name,
                                     shown_url(cfg.source.path))
    return sorted((SourceFile(fs.unstrip_protocol(p), fingerprint(i)) for p, i in files.items()),
                  key=lambda s: s.url)


def list_batches(cfg: DatasetConfig) -> list[str]:
    """The URLs of `list_sources`."""
    return [s.url for s in list_sources(cfg)]


# -- reading ---------------------------------------------------------------------------


def fetch_bytes(cfg: DatasetConfig, url: str) -> bytes:
    """The raw bytes of one batch, refused past `limits.file_bytes` (I/O: may raise transient
    errors, which callers retry)."""
    return limits.fetch_bounded(cfg, url, source_name(url))


def _format_of(cfg: DatasetConfig, url: str) -> str:
    if cfg.source.format != "auto":
        return cfg.source.format
    return "parquet" if url.lower().endswith(RAW_EXTENSIONS["parquet"]) else "csv"


def _normalize_timestamp(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Make the timestamp Datetime("us"), naive UTC, when it parses; otherwise leave it as is.

    A column that does not parse is left unchanged on purpose: the suite's
    'parses as datetime' rule then reports it with examples, instead of a crash.
    """
    if column not in frame.columns:
        return frame
    s = frame.get_column(column)
    if s.dtype == pl.String:
        try:
            parsed = s.str.to_datetime(time_unit="us", strict=False)
        except pl.exceptions.PolarsError:
            return frame
        if parsed.null_count() != s.null_count():
            return frame  # some values did not parse
        s = parsed
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("us"))
    if isinstance(s.dtype, pl.Datetime):
        if s.dtype.time_zone is not None:
            s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        s = s.cast(pl.Datetime("us"))
    return frame.with_columns(s.alias(column))


def _typed_csv(cfg: DatasetConfig, data: bytes) -> pl.DataFrame:
    """The fast read: the config says what each column is, so nothing is inferred.

    Raises on any value that does not fit; the caller then reads with full inference,
    so the suite can name the column, rule and offending values.
    """
    cols = cfg.columns
    types: dict[str, pl.DataType] = {f: pl.Float64() for f in cols.features}
    types[cols.timestamp] = pl.String()  # parsed below: offsets become UTC
    if cols.entity:
        types[cols.entity] = pl.String()
    if cols.label:
        types[cols.label] = pl.Int64()
    return pl.read_csv(data, schema_overrides=types, infer_schema_length=0)


def parse_batch(cfg: DatasetConfig, data: bytes, name: str) -> pl.DataFrame:
    """Parse raw bytes into a polars frame; BatchReadError for anything that is not a table."""
    fmt = "parquet" if _format_of(cfg, name) == "parquet" else "csv"
    if not data:
        raise BatchReadError(f"{name}: empty file (0 bytes)")
    try:  # the bounds first: what they guard against is the memory parsing would take
        if fmt == "parquet":
            limits.check_parquet(cfg.limits, data, name)
        else:
            data = limits.checked_csv(cfg.limits, data, name)
    except limits.OverLimit:
        raise
    except ValueError as err:
        raise BatchReadError(clip(str(err))) from None
    errors = (pl.exceptions.PolarsError, OSError, pa.ArrowException, UnicodeDecodeError)
    try:
        if fmt == "parquet":
            frame = pl.read_parquet(io.BytesIO(data))
        else:
            try:
                frame = _typed_csv(cfg, data)
            except errors:
                # Full-file schema inference: with the default 100-row sample, a bad
                # value late in the file is a parse crash instead of a named rule failure.
                frame = pl.read_csv(data, try_parse_dates=True, infer_schema_length=None)
    except errors as err:
        problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BatchReadError(clip(f"{name}: unreadable {fmt.upper()} ({clip(problem, 200)})")) \
            from None
    twice = sorted({c.rsplit("_duplicated_", 1)[0] for c in frame.columns if "_duplicated_" in c})
    if twice:  # polars renamed the copies; which one is meant cannot be known
        raise BatchReadError(clip(f"{name}: header failed rule 'unique column names' "
                                  f"({[clip(c, 60) for c in twice][:12]} appear more than once)"))
    limits.check_entities(cfg, frame, name)
    if frame.height == 0:
        # A header-only file: give its columns their intended types (no values to
        # lose), so the only failure reported is the row-count rule.
        casts = {f: pl.Float64 for f in cfg.columns.features if f in frame.columns}
        if cfg.columns.timestamp in frame.columns:
            casts[cfg.columns.timestamp] = pl.Datetime("us")
        frame = frame.cast(casts)  # type: ignore[arg-type]
    return _normalize_timestamp(frame, cfg.columns.timestamp)


def to_validated(cfg: DatasetConfig, frame: pl.DataFrame) -> pl.DataFrame:
    """Map a validated raw frame onto the validated layer's canonical columns and types,
    sorted by (entity, timestamp); a feed that already delivers in that order is not sorted
    again. Kept in polars: the commit converts to the table's Arrow schema once."""
    cols = cfg.columns
    entity = (
        pl.col(cols.entity).cast(pl.String) if cols.entity else pl.lit(arrow_schemas.DEFAULT_ENTITY)
    )
    label = pl.col(cols.label).cast(pl.Int8) if cols.label else pl.lit(0, dtype=pl.Int8)
    out = frame.select(
        pl.col(cols.timestamp).cast(pl.Datetime("us")).alias(arrow_schemas.TIMESTAMP),
        entity.alias(arrow_schemas.ENTITY),
        *(pl.col(f).cast(pl.Float64) for f in cols.features),
        label.alias(arrow_schemas.LABEL),
    )
    return out if layer.in_key_order(out) else out.sort(layer.KEY)


# -- filing ----------------------------------------------------------------------------


def delivered_name(url: str) -> str:
    """A source file's name as delivered (a remote URL's query is not part of it; a '?' in a
    local file name is)."""
    path = url if urlsplit(url).scheme in ("", "file") else urlsplit(url).path
    return posixpath.basename(path)


def source_name(url: str) -> str:
    """A source file's name as reasons and logs show it (one line, odd characters escaped)."""
    return shown_name(delivered_name(url))


def odd_name(url: str) -> bool:
    """A name with a control character (a newline) or a backslash: it would break a log line,
    a shell or a tool that reads the `source` column, so the file is quarantined."""
    name = delivered_name(url)
    return "\\" in name or not name.isprintable()


SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
SAFE_SUFFIX = re.compile(r"(\.[A-Za-z0-9]{1,8}){1,2}\Z")  # ".csv", ".csv.gz"


def quarantined_name(url: str) -> str:
    """The name a quarantined copy is stored under: the source's own when it is a plain file
    name, else "source" + its plain suffix (a backslash, a newline or a control character
    in a name must not decide a store key; the original is in validation.json)."""
    name = delivered_name(url)
    if name != "validation.json" and SAFE_FILE_NAME.fullmatch(name):
        return name
    suffix = SAFE_SUFFIX.search(name)
    return "source" + (suffix.group(0) if suffix else "")


def quarantine(
    store: Store,
    cfg: DatasetConfig,
    url: str,
    data: bytes | None,
    batch_id: str,
    reasons: list[str],
    result: dict[str, Any] | None = None,
    error: str | None = None,
    **detail: Any,
) -> list[str]:
    """Keep the untouched source bytes (when given) and a report under quarantine/<batch-id>/."""
    base = f"{dataset_prefix(cfg)}/quarantine/{batch_id}"
    name = quarantined_name(url)
    report = {
        "source": shown_url(url),
        "source_name": delivered_name(url),  # as delivered (JSON escapes what it must)
        "batch_id": batch_id,
        "quarantined_at": datetime.now(UTC).isoformat(),
        "reasons": reasons,
        "error": error,
        "result": result,
        **detail,
    }
    if data is None:
        store.write_json(f"{base}/validation.json", report)
        return [f"{base}/validation.json"]
    keys = [f"{base}/{name}", f"{base}/validation.json"]
    store.write_bytes(keys[0], data)
    store.write_json(keys[1], report)
    return keys


def _ledger_key(cfg: DatasetConfig, url: str) -> str:
    return f"{dataset_prefix(cfg)}/ingested/{source_id_of(url)}.json"


@dataclass
class LedgerEntry:
    """What the ledger knows about one source: its last outcome, and the days it holds."""

    outcome: BatchOutcome
    listing: dict[str, Any] | None
    days: list[str]
    pending_days: list[str]

    @classmethod
    def parse(cls, record: dict[str, Any]) -> LedgerEntry:
        if "outcome" not in record:  # written before listings and manifests were recorded
            outcome = BatchOutcome.from_dict(record)
            days = sorted({m for k in outcome.keys for m in re.findall(r"date=([\d-]+)", k)})
            return cls(outcome, None, days if outcome.status == "validated" else [], [])
        return cls(BatchOutcome.from_dict(record["outcome"]), record.get("listing"),
                   record.get("days", []), record.get("pending_days", []))

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome.to_dict(), "listing": self.listing, "days": self.days,
                "pending_days": self.pending_days, "filed_at": datetime.now(UTC).isoformat()}

    @property
    def settled(self) -> bool:
        """No commit of this source was left half-done (by a killed run)."""
        return not self.pending_days

    def touched_days(self) -> list[date]:
        return sorted({date.fromisoformat(d) for d in self.days + self.pending_days})


def read_ledger(store: Store, cfg: DatasetConfig, url: str) -> LedgerEntry | None:
    key = _ledger_key(cfg, url)
    return LedgerEntry.parse(store.read_json(key)) if store.exists(key) else None


_UNREAD: Any = object()


def ingest_batch(store: Store, cfg: DatasetConfig, url: str,
                 listing: dict[str, Any] | None = None, known: Any = _UNREAD) -> BatchOutcome:
    """Read, validate and file one batch. Raises only on I/O errors (which are retryable).

    A source whose listing metadata (or, without one, whose bytes) match its ledger
    entry is not fetched or validated again: its recorded outcome is returned, so
    nightly reruns and backfills stay cheap. `known` is the ledger entry when the
    caller already read it (None: there is none).
    """
    entry = read_ledger(store, cfg, url) if known is _UNREAD else known
    if entry is not None and entry.settled and listing and entry.listing == listing:
        return entry.outcome
    try:
        limits.check_listed_size(cfg.limits, source_name(url), (listing or {}).get("size"))
        data = limits.fetch_bounded(cfg, url, source_name(url))
    except limits.OverLimit as err:
        return _unread(store, cfg, url, entry, listing, str(err))
    batch_id = batch_id_of(data)
    if entry is not None and entry.settled and entry.outcome.batch_id == batch_id:
        if listing and entry.listing != listing:  # touched, not changed: remember the new listing
            entry.listing = listing
            store.write_json(_ledger_key(cfg, url), entry.to_json())
        return entry.outcome
    return _file_batch(store, cfg, url, data, batch_id, entry, listing)


def _unread(store: Store, cfg: DatasetConfig, url: str, entry: LedgerEntry | None,
            listing: dict[str, Any] | None, reason: str) -> BatchOutcome:
    """Quarantine a file past `limits.file_bytes` without reading it: its report only (the
    source keeps the bytes; copying them would cost what the bound is there to prevent)."""
    # Named by what the listing says of its content (size, ETag), not its mtime: touching
    # the file does not make it another batch.
    batch_id = batch_id_of(json_bytes([url, {k: v for k, v in (listing or {}).items()
                                             if k not in ("mtime", "LastModified")}]))
    if entry is not None and entry.settled and entry.outcome.batch_id == batch_id:
        entry.listing = listing
        store.write_json(_ledger_key(cfg, url), entry.to_json())
        return entry.outcome
    held = [d.isoformat() for d in entry.touched_days()] if entry else []
    outcome = _quarantined(store, cfg, url, None, batch_id, 0, [reason], error=reason,
                           copied=False)
    return _record(store, cfg, url, outcome, listing, held)


def _quarantined(store: Store, cfg: DatasetConfig, url: str, data: bytes | None, batch_id: str,
                 rows: int, reasons: list[str], **detail: Any) -> BatchOutcome:
    keys = quarantine(store, cfg, url, data, batch_id, reasons, **detail)
    reason = clip("; ".join(reasons))
    run_logger(__name__).warning(clip(f"quarantined {source_name(url)} (batch {batch_id}): "
                                      f"{reason}"))
    return BatchOutcome(shown_url(url), "quarantined", rows, reason, keys, batch_id, reasons)


def _file_batch(store: Store, cfg: DatasetConfig, url: str, data: bytes, batch_id: str,
                entry: LedgerEntry | None, listing: dict[str, Any] | None) -> BatchOutcome:
    """Parse and validate the bytes; commit the rows or quarantine the bytes; record it."""
    name = source_name(url)
    before = entry.touched_days() if entry else []
    held = [d.isoformat() for d in before]  # a quarantined re-delivery keeps the old rows
    detail: dict[str, Any] = {}
    if odd_name(url):
        reason = (f"{name}: file name failed rule 'printable, no backslash' (kept as "
                  f"{quarantined_name(url)!r}; the name as delivered is in validation.json)")
        outcome = _quarantined(store, cfg, url, data, batch_id, 0, [clip(reason)], error=reason)
        return _record(store, cfg, url, outcome, listing, held)
    try:
        frame = parse_batch(cfg, data, name)
    except (BatchReadError, limits.OverLimit) as err:
        outcome = _quarantined(store, cfg, url, data, batch_id, 0, [str(err)], error=str(err))
        return _record(store, cfg, url, outcome, listing, held)

    checked = validate_frame(cfg, frame, name)
    if not checked.success:
        reasons = checked.reasons or [f"{name}: failed validation (see validation.json)"]
        outcome = _quarantined(store, cfg, url, data, batch_id, frame.height, reasons,
                               result=checked.result)
        return _record(store, cfg, url, outcome, listing, held)

    rows = to_validated(cfg, frame)
    pending = sorted({d.isoformat() for d in [*before, *layer.days_of(rows)]})
    last = entry.outcome if entry else BatchOutcome(shown_url(url), "pending", 0, None)
    # Written before the commit: a run killed mid-commit leaves this, and the next run
    # re-files the source and clears every day it may have touched.
    store.write_json(_ledger_key(cfg, url), LedgerEntry(last, None, held, pending).to_json())
    try:
        committed = layer.commit_source(store, cfg, shown_url(url), rows, before)
    except layer.ConflictError as err:
        collisions = layer.Collisions(conflicts=err.collisions)
        key = f"({cfg.columns.entity or 'entity'}, {cfg.columns.timestamp})"
        reason = clip(f"{name}: columns {cfg.columns.key} failed rule 'unique key {key} across "
                      f"sources' ({len(err.collisions)} of {frame.height} rows already filed "
                      f"with different values, e.g. {collisions.sample()})")
        outcome = _quarantined(store, cfg, url, data, batch_id, frame.height, [reason],
                               collisions=err.collisions)
        return _record(store, cfg, url, outcome, listing, held)
    if committed.replaced:
        detail["replaced_keys"] = committed.replaced
    outcome = BatchOutcome(shown_url(url), "validated", frame.height, None, committed.keys,
                           batch_id, [], committed.duplicates, len(committed.replaced))
    run_logger(__name__).info(clip(
        f"validated {name} (batch {batch_id}): {frame.height} rows -> {len(committed.keys)} "
        f"days, table version {committed.version}, {committed.duplicates} already held by "
        f"another source, {len(committed.replaced)} replaced"))
    return _record(store, cfg, url, outcome, listing, committed.days, **detail)


def _record(store: Store, cfg: DatasetConfig, url: str, outcome: BatchOutcome,
            listing: dict[str, Any] | None, days: list[str], **detail: Any) -> BatchOutcome:
    """The ledger entry, written last: the commit of the whole batch."""
    store.write_json(_ledger_key(cfg, url),
                     {**LedgerEntry(outcome, listing, days, []).to_json(), **detail})
    return outcome



# -- whole source, or one night -------------------------------------------------------


@dataclass(frozen=True)
class IngestReport:
    """What an ingestion run filed: one outcome per batch, the totals derived from them, and
    for a night the entities whose volume is far from usual."""

    dataset: str
    batches: list[BatchOutcome]
    volume: dict[str, Any] | None = None

    def _rows(self, status: str) -> int:
        return sum(b.rows for b in self.batches if b.status == status)

    @property
    def rows_validated(self) -> int:
        return self._rows("validated")

    @property
    def rows_quarantined(self) -> int:
        return self._rows("quarantined")

    @property
    def rows_in(self) -> int:
        return self.rows_validated + self.rows_quarantined

    @property
    def rows_duplicate(self) -> int:
        return sum(b.duplicates for b in self.batches if b.status == "validated")

    @property
    def quarantined(self) -> list[BatchOutcome]:
        return [b for b in self.batches if b.status == "quarantined"]

    def to_json(self) -> dict[str, Any]:
        """The flow-result / artifact form (totals included)."""
        return {"dataset": self.dataset, "rows_in": self.rows_in,
                "rows_validated": self.rows_validated, "rows_quarantined": self.rows_quarantined,
                "rows_duplicate": self.rows_duplicate,
                "batches_validated": len(self.batches) - len(self.quarantined),
                "batches_quarantined": len(self.quarantined),
                "batches": [b.to_dict() for b in self.batches], "volume": self.volume}


def _ledgers(store: Store, cfg: DatasetConfig, urls: list[str]) -> dict[str, LedgerEntry | None]:
    """Every source's ledger entry in one bulk read (concurrent on S3)."""
    keys = {_ledger_key(cfg, u): u for u in urls}
    found = store.read_many(list(keys))
    return {u: LedgerEntry.parse(json.loads(found[k])) if k in found else None
            for k, u in keys.items()}


def ingest_urls(store: Store, cfg: DatasetConfig,
                sources: list[str] | list[SourceFile]) -> IngestReport:
    """File each batch, new ones `source.workers` at a time; a bad batch is quarantined, never fatal."""
    files = [s if isinstance(s, SourceFile) else SourceFile(s) for s in sources]
    ledgers = _ledgers(store, cfg, [f.url for f in files])

    def one(f: SourceFile) -> BatchOutcome:
        return ingest_batch(store, cfg, f.url, f.fingerprint, ledgers[f.url])

    workers = min(cfg.source.workers, len(files))
    if workers <= 1:
        outcomes = [one(f) for f in files]
    else:  # each thread runs in a copy of this context, so Prefect's run logger still works
        with ThreadPoolExecutor(workers, thread_name_prefix="ingest") as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, f) for f in files]
            outcomes = [f.result() for f in futures]
    report = IngestReport(cfg.name, outcomes)
    run_logger(__name__).info(
        "dataset '%s': %d batches, %d rows validated (%d already held by another source), %d rows quarantined",
        cfg.name, len(report.batches), report.rows_validated, report.rows_duplicate,
        report.rows_quarantined,
    )  # fmt: skip
    return report


DATE_IN_NAME = re.compile(r"\d{4}-\d{2}-\d{2}")


def batches_for_night(urls: list[str], day: date) -> list[str] | None:
    """The batches of a night and its context day; None when file names carry no dates
    (then nothing can be known and every batch is ingested: slower, never wrong)."""
    dated = {u: DATE_IN_NAME.findall(posixpath.basename(u)) for u in urls}
    if not any(dated.values()):
        return None
    wanted = {day.isoformat(), (day - timedelta(days=1)).isoformat()}
    return [u for u, days in dated.items() if wanted & set(days)]


def volume_report(store: Store, cfg: DatasetConfig, day: date) -> dict[str, Any]:
    """Entities whose rows in the night are far from their usual volume.

    "Usual" is the median of an entity's rows over the trailing `volume_days` validated
    days (a day it sent nothing counts as 0), read from the table (two columns).
    Reported: `missing` (usually sends, sent nothing), `low` / `high` (at most 1/factor
    or at least factor x usual), `new` (no history).
    """
    rules = cfg.validation
    history_days = [day - timedelta(days=i) for i in range(1, rules.volume_days + 1)]
    counts = layer.day_entity_rows(store, cfg, [day, *history_days])
    tonight = counts.pop(day.isoformat(), {})
    entities = sorted({e for c in counts.values() for e in c})
    usual = {e: median(c.get(e, 0) for c in counts.values()) for e in entities}
    factor = rules.volume_factor
    report: dict[str, Any] = {"night": day.isoformat(), "history_days": len(counts),
                              "missing": [], "low": [], "high": [], "new": []}
    if not counts:
        return report
    for e in entities:
        n, u = tonight.get(e, 0), usual[e]
        if u > 0 and n == 0:
            report["missing"].append({"entity": e, "rows": 0, "usual": u})
        elif u > 0 and n * factor <= u:
            report["low"].append({"entity": e, "rows": n, "usual": u})
        elif u > 0 and n >= factor * u:
            report["high"].append({"entity": e, "rows": n, "usual": u})
    report["new"] = [{"entity": e, "rows": n} for e, n in sorted(tonight.items()) if e not in usual]
    return report


def _log_volume(cfg: DatasetConfig, report: dict[str, Any]) -> None:
    logger = run_logger(__name__)
    for kind in ("missing", "low", "high", "new"):
        if report[kind]:
            names = ", ".join(clip(str(r["entity"]), 40) for r in report[kind][:10])
            more = f" and {len(report[kind]) - 10} more" if len(report[kind]) > 10 else ""
            logger.warning(clip(f"{cfg.name} {report['night']}: {len(report[kind])} entities "
                                f"with {kind} volume vs the last {report['history_days']} days: "
                                f"{names}{more}"))


@task(name="ingest-source", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest_source(cfg: DatasetConfig) -> IngestReport:
    """Ingest every batch of a dataset's source into its store.

    Safe to retry as a whole: a batch already filed returns its recorded outcome,
    and a re-filed batch rewrites the same keys.
    """
    return ingest_urls(store_for(cfg), cfg, list_sources(cfg))


@task(name="ingest-night", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest_night(cfg: DatasetConfig, day: date) -> IngestReport:
    """Validate the night's batches and its context day's (bad ones go to quarantine), then
    report entities whose volume tonight is far from usual."""
    sources = list_sources(cfg)
    chosen = batches_for_night([s.url for s in sources], day)
    if chosen is not None:
        run_logger(__name__).info("%s %s: ingesting %d of %d batches", cfg.name, day,
                                  len(chosen), len(sources))
        wanted = set(chosen)
        sources = [s for s in sources if s.url in wanted]
    store = store_for(cfg)
    report = ingest_urls(store, cfg, sources)
    volume = volume_report(store, cfg, day)
    _log_volume(cfg, volume)
    return IngestReport(report.dataset, report.batches, volume)
