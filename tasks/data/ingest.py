"""Ingest raw batches: read, validate with the config's GX suite, then either
write date partitions of the validated layer or quarantine the batch untouched.

Why this shape:
- one source file is one batch, identified by the sha256 of its bytes, so
  re-ingesting the same file rewrites the same keys instead of duplicating rows;
- a bad batch never raises out of the pipeline and never touches validated data
  or models: it is copied byte for byte to quarantine with a report whose every
  line names the file, the column and the rule;
- only I/O is retried (a validation failure is deterministic: retrying it is waste);
- a night ingests only its own files (and the day before, the window context):
  re-validating the whole history every night would grow without bound.
"""

from __future__ import annotations

import io
import posixpath
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas import arrow as arrow_schemas
from schemas import suites
from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.store import Store, finite, sha256_bytes

RAW_EXTENSIONS = {"csv": (".csv",), "parquet": (".parquet", ".pq")}
MAX_EXAMPLES = 3


class BatchReadError(ValueError):
    """A batch that cannot be parsed at all (empty, truncated, not CSV/Parquet); names the file."""


@dataclass
class ValidationOutcome:
    """What validation found: `reasons` are one-line, human-readable failures."""

    success: bool
    reasons: list[str]
    result: dict[str, Any]


@dataclass
class BatchOutcome:
    """The fate of one batch, JSON-able via `to_dict()` for flow summaries and artifacts."""

    source: str
    status: str  # "validated" | "quarantined"
    rows: int
    reason: str | None
    keys: list[str] = field(default_factory=list)
    batch_id: str = ""
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_id_of(data: bytes) -> str:
    return sha256_bytes(data)[:16]


def dataset_prefix(cfg: DatasetConfig) -> str:
    return f"datasets/{cfg.name}"


# -- listing ---------------------------------------------------------------------------


def _has_magic(path: str) -> bool:
    """fsspec's glob characters (its own helper is not public API)."""
    return any(ch in path for ch in "*?[")


def _wanted_extensions(cfg: DatasetConfig) -> tuple[str, ...]:
    if cfg.source.format == "auto":
        return RAW_EXTENSIONS["csv"] + RAW_EXTENSIONS["parquet"]
    return RAW_EXTENSIONS[cfg.source.format]


def list_batches(cfg: DatasetConfig) -> list[str]:
    """Expand `source.path` (file, directory, glob, or any fsspec URL) into sorted file URLs.

    A glob that matches nothing is a quiet night (empty list, warning); a plain
    path that does not exist is a configuration mistake and raises.
    """
    fs, path = fsspec.core.url_to_fs(cfg.source.path, **cfg.source.storage_options)
    if _has_magic(path):
        found = fs.glob(path, detail=True)
        files = [p for p, info in found.items() if info.get("type") == "file"]
    elif fs.isdir(path):
        wanted = _wanted_extensions(cfg)
        files = [p for p in fs.find(path) if p.lower().endswith(wanted)]
    elif fs.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(
            f"dataset '{cfg.name}': source.path {cfg.source.path!r} does not exist"
        )
    if not files:
        run_logger(__name__).warning("dataset '%s': no batches found at %s", cfg.name, cfg.source.path)
    return sorted(fs.unstrip_protocol(p) for p in files)


# -- reading ---------------------------------------------------------------------------


def fetch_bytes(cfg: DatasetConfig, url: str) -> bytes:
    """The raw bytes of one batch (I/O: may raise transient errors, which callers retry)."""
    with fsspec.open(url, "rb", **cfg.source.storage_options) as fh:
        return fh.read()


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


def parse_batch(cfg: DatasetConfig, data: bytes, name: str) -> pl.DataFrame:
    """Parse raw bytes into a polars frame; BatchReadError for anything that is not a table."""
    fmt = "parquet" if _format_of(cfg, name) == "parquet" else "csv"
    if not data:
        raise BatchReadError(f"{name}: empty file (0 bytes)")
    try:
        if fmt == "parquet":
            frame = pl.read_parquet(io.BytesIO(data))
        else:
            # Full-file schema inference: with the default 100-row sample, a bad
            # value late in the file is a parse crash instead of a named rule failure.
            frame = pl.read_csv(io.BytesIO(data), try_parse_dates=True, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError, pa.ArrowException, UnicodeDecodeError) as err:
        problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BatchReadError(f"{name}: unreadable {fmt.upper()} ({problem})") from None
    if frame.height == 0:
        # A header-only file: give its columns their intended types (no values to
        # lose), so the only failure reported is the row-count rule.
        casts = {f: pl.Float64 for f in cfg.columns.features if f in frame.columns}
        if cfg.columns.timestamp in frame.columns:
            casts[cfg.columns.timestamp] = pl.Datetime("us")
        frame = frame.cast(casts)  # type: ignore[arg-type]
    return _normalize_timestamp(frame, cfg.columns.timestamp)


# -- validation ------------------------------------------------------------------------


def with_step_column(cfg: DatasetConfig, frame: pl.DataFrame) -> pl.DataFrame:
    """Add `__ts_step_seconds` (diff to the previous row of the same entity, first row null).

    All-null when the timestamp is not a datetime or the entity column is missing:
    those are reported by their own rules, and a second failure would be noise.
    """
    ts, entity = cfg.columns.timestamp, cfg.columns.entity
    usable = ts in frame.columns and isinstance(frame.schema[ts], pl.Datetime)
    usable = usable and (entity is None or entity in frame.columns)
    if not usable:
        return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(suites.STEP_COLUMN))
    step = pl.col(ts).diff().dt.total_microseconds().cast(pl.Float64) / 1e6
    if entity is not None:
        step = step.over(entity)
    return frame.with_columns(step.alias(suites.STEP_COLUMN))


def _raised(res: Any) -> bool:
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return True
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _short(value: Any) -> str:
    """A compact example: a key row as (m1, 2026-01-06 13:30:00), anything else as its repr."""
    if isinstance(value, dict):
        text = "(" + ", ".join(str(v) for v in value.values()) + ")"
    elif isinstance(value, _Preformatted):
        text = str(value)
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Preformatted(str):
    """An example already written for humans (no quotes added)."""


def _examples(values: list[Any]) -> str:
    shown: list[str] = []
    for v in values:
        text = _short(v)
        if text not in shown:
            shown.append(text)
        if len(shown) == MAX_EXAMPLES:
            break
    return "[" + ", ".join(shown) + "]"


def _type_examples(frame: pl.DataFrame, column: str, want_datetime: bool) -> list[Any]:
    """Values that do not convert to the wanted type (the type rule itself only sees a dtype)."""
    s = frame.get_column(column)
    if s.dtype != pl.String:
        return s.drop_nulls().head(MAX_EXAMPLES).to_list()
    if want_datetime:
        converted = s.str.to_datetime(time_unit="us", strict=False)
    else:
        converted = s.cast(pl.Float64, strict=False)
    return s.filter(converted.is_null() & s.is_not_null()).head(MAX_EXAMPLES).to_list()


def _step_examples(cfg: DatasetConfig, frame: pl.DataFrame) -> list[_Preformatted]:
    """The offending rows of the 'strictly increasing' rule, as entity@timestamp (after prev)."""
    ts, entity = cfg.columns.timestamp, cfg.columns.entity
    prev = pl.col(ts).shift(1)
    if entity is not None:
        prev = prev.over(entity)
    bad = frame.with_columns(prev.alias("__prev")).filter(pl.col(suites.STEP_COLUMN) <= 0)
    out = []
    for row in bad.head(MAX_EXAMPLES).iter_rows(named=True):  # at most 3 rows
        who = f"{row[entity]}@" if entity is not None else ""
        out.append(_Preformatted(f"{who}{row[ts]} after {row['__prev']}"))
    return out


def _reason(cfg: DatasetConfig, frame: pl.DataFrame, source_name: str, res: Any) -> str:
    """One line: file, column(s), rule, counts and a few unexpected values."""
    conf = res.expectation_config
    meta = conf.meta or {}
    rule = meta.get("rule", conf.type)
    kwargs = conf.kwargs
    if "column_list" in kwargs:
        where = f"columns {list(kwargs['column_list'])}"
    elif meta.get("column") or kwargs.get("column"):
        where = f"column '{meta.get('column') or kwargs.get('column')}'"
    else:
        where = "table"
    r = res.result or {}
    column = kwargs.get("column")
    if _raised(res):
        detail = "could not be evaluated"
    elif conf.type == "expect_column_to_exist":
        found = [c for c in frame.columns if c != suites.STEP_COLUMN]
        detail = f"missing; found columns {found[:12]}"
    elif conf.type == "expect_table_row_count_to_be_between":
        detail = f"{r.get('observed_value')} rows"
    elif conf.type == "expect_column_values_to_be_in_type_list":
        examples = _type_examples(frame, column, want_datetime=column == cfg.columns.timestamp)
        detail = f"dtype {r.get('observed_value')}, e.g. {_examples(examples)}"
    else:
        count, total = r.get("unexpected_count"), r.get("element_count")
        examples = r.get("partial_unexpected_list") or []
        if column == suites.STEP_COLUMN:
            examples = _step_examples(cfg, frame)
        detail = f"{count} of {total} rows, e.g. {_examples(examples)}"
    return f"{source_name}: {where} failed rule '{rule}' ({detail})"


def validate_frame(cfg: DatasetConfig, frame: pl.DataFrame, source_name: str) -> ValidationOutcome:
    """Run the config's GX suite on a polars frame; one reason line per failed rule.

    Failures that are only a consequence of a missing column (GX raises on
    them) are dropped: the 'column exists' reason already says it all.
    """
    frame = with_step_column(cfg, frame)
    wanted = [
        c
        for c in (
            cfg.columns.timestamp,
            cfg.columns.entity,
            *cfg.columns.features,
            cfg.columns.label,
        )
        if c
    ]
    present = [c for c in wanted if c in frame.columns] + [suites.STEP_COLUMN]
    pdf = frame.select(present).to_pandas()
    vd = suites.validation_definition(cfg)
    with suites.gx_lock():
        result = vd.run(batch_parameters={"dataframe": pdf})
    order = suites.expectation_order(vd)
    missing = set(wanted) - set(frame.columns)
    failed = sorted(
        (res for res in result.results if not res.success),
        key=lambda res: order.get(res.expectation_config.id, 10**6),
    )
    # A failed type rule makes the value rules on that column meaningless (GX may raise on them).
    wrong_type = {
        res.expectation_config.kwargs.get("column")
        for res in failed
        if res.expectation_config.type == "expect_column_values_to_be_in_type_list"
    }
    reasons = []
    for res in failed:
        kw = res.expectation_config.kwargs
        cols = set(kw.get("column_list") or [kw.get("column")])
        if _raised(res) and cols & (missing | wrong_type):
            continue
        reasons.append(_reason(cfg, frame, source_name, res))
    return ValidationOutcome(
        success=bool(result.success), reasons=reasons, result=finite(result.to_json_dict())
    )


# -- writing ---------------------------------------------------------------------------


def to_validated(cfg: DatasetConfig, frame: pl.DataFrame) -> pa.Table:
    """Map a validated raw frame onto the validated layer's canonical Arrow schema."""
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
    ).sort([arrow_schemas.ENTITY, arrow_schemas.TIMESTAMP])
    return out.to_arrow().cast(arrow_schemas.validated_schema(cfg))


def _partition_key(cfg: DatasetConfig, day: date, batch_id: str) -> str:
    return f"{dataset_prefix(cfg)}/validated/date={day.isoformat()}/part-{batch_id}.parquet"


def write_validated(
    store: Store, cfg: DatasetConfig, frame: pl.DataFrame, batch_id: str
) -> list[str]:
    """Write one Parquet file per calendar day of the batch; same part id -> same keys."""
    table = pl.from_arrow(to_validated(cfg, frame))
    assert isinstance(table, pl.DataFrame)
    days = table.get_column(arrow_schemas.TIMESTAMP).dt.date().alias("__day")
    keys = []
    schema = arrow_schemas.validated_schema(cfg)
    for (day,), part in table.with_columns(days).group_by("__day", maintain_order=True):
        key = _partition_key(cfg, day, batch_id)
        store.write_parquet(key, part.drop("__day").to_arrow().cast(schema))
        keys.append(key)
    return sorted(keys)


def quarantine(
    store: Store,
    cfg: DatasetConfig,
    url: str,
    data: bytes,
    batch_id: str,
    reasons: list[str],
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> list[str]:
    """Keep the untouched source bytes and a report under quarantine/<batch-id>/."""
    base = f"{dataset_prefix(cfg)}/quarantine/{batch_id}"
    name = posixpath.basename(url) or "source"
    if name == "validation.json":
        name = "source-validation.json"
    report = {
        "source": url,
        "batch_id": batch_id,
        "quarantined_at": datetime.now(UTC).isoformat(),
        "reasons": reasons,
        "error": error,
        "result": result,
    }
    keys = [f"{base}/{name}", f"{base}/validation.json"]
    store.write_bytes(keys[0], data)
    store.write_json(keys[1], report)
    return keys


def _ledger_key(cfg: DatasetConfig, url: str) -> str:
    return f"{dataset_prefix(cfg)}/ingested/{batch_id_of(url.encode())}.json"


def _already_filed(store: Store, cfg: DatasetConfig, url: str, batch_id: str) -> BatchOutcome | None:
    """The recorded outcome when these exact bytes from this source were filed before."""
    key = _ledger_key(cfg, url)
    if not store.exists(key):
        return None
    record = store.read_json(key)
    if record.get("batch_id") != batch_id or not all(store.exists(k) for k in record["keys"]):
        return None
    return BatchOutcome(**record)


def ingest_batch(store: Store, cfg: DatasetConfig, url: str) -> BatchOutcome:
    """Read, validate and file one batch. Raises only on I/O errors (which are retryable).

    A source whose bytes were already filed (validated or quarantined) is not validated
    again: its recorded outcome is returned, so nightly reruns and backfills stay cheap.
    """
    data = fetch_bytes(cfg, url)
    batch_id = batch_id_of(data)
    known = _already_filed(store, cfg, url, batch_id)
    if known is not None:
        return known
    outcome = _file_batch(store, cfg, url, data, batch_id)
    store.write_json(_ledger_key(cfg, url), outcome.to_dict())  # written last: the commit
    return outcome


def _file_batch(store: Store, cfg: DatasetConfig, url: str, data: bytes, batch_id: str) -> BatchOutcome:
    """Parse and validate the bytes; write validated partitions or the quarantine entry."""
    name = posixpath.basename(url)
    try:
        frame = parse_batch(cfg, data, name)
    except BatchReadError as err:
        reasons = [str(err)]
        keys = quarantine(store, cfg, url, data, batch_id, reasons, error=str(err))
        run_logger(__name__).warning("quarantined %s (batch %s): %s", name, batch_id, reasons[0])
        return BatchOutcome(url, "quarantined", 0, reasons[0], keys, batch_id, reasons)

    outcome = validate_frame(cfg, frame, name)
    if not outcome.success:
        reasons = outcome.reasons or [f"{name}: failed validation (see validation.json)"]
        keys = quarantine(store, cfg, url, data, batch_id, reasons, result=outcome.result)
        reason = "; ".join(reasons)
        run_logger(__name__).warning("quarantined %s (batch %s): %s", name, batch_id, reason)
        return BatchOutcome(url, "quarantined", frame.height, reason, keys, batch_id, reasons)

    # Parts are named after the source, not its content: a corrected re-delivery of
    # the same file replaces its rows instead of adding a second copy beside them.
    keys = write_validated(store, cfg, frame, batch_id_of(url.encode()))
    run_logger(__name__).info(
        "validated %s (batch %s): %d rows -> %d partitions", name, batch_id, frame.height, len(keys)
    )
    return BatchOutcome(url, "validated", frame.height, None, keys, batch_id, [])


# -- reading the validated layer -------------------------------------------------------


def _as_naive_utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _validated_scan(
    store: Store, cfg: DatasetConfig, start: datetime | None, end: datetime | None,
    entities: list[str] | None,
) -> tuple[pads.Dataset | None, pads.Expression | None]:
    """The validated layer's Parquet dataset over the partitions that overlap [start, end),
    and the row filter (time range, scope's entities) to push down into its scan."""
    start, end = _as_naive_utc(start), _as_naive_utc(end)
    prefix = f"{dataset_prefix(cfg)}/validated"
    paths = []
    for folder in store.list_dirs(prefix):
        if not folder.startswith("date="):
            continue
        try:
            day = date.fromisoformat(folder[len("date=") :])
        except ValueError:
            continue
        day_start = datetime.combine(day, datetime.min.time())
        if (start is not None and day_start + timedelta(days=1) <= start) or (
            end is not None and day_start >= end
        ):
            continue
        paths += [store.path(k) for k in store.list(f"{prefix}/{folder}") if k.endswith(".parquet")]
    if not paths:
        return None, None
    ts = pads.field(arrow_schemas.TIMESTAMP)
    conditions = []
    if start is not None:
        conditions.append(ts >= pa.scalar(start, pa.timestamp("us")))
    if end is not None:
        conditions.append(ts < pa.scalar(end, pa.timestamp("us")))
    scope = cfg.group_entities()
    wanted = scope if entities is None else (
        entities if scope is None else [e for e in entities if e in set(scope)])
    if wanted is not None:
        conditions.append(pads.field(arrow_schemas.ENTITY).isin(wanted))
    condition = None
    for c in conditions:
        condition = c if condition is None else condition & c
    schema = arrow_schemas.validated_schema(cfg)
    return pads.dataset(paths, schema=schema, format="parquet", filesystem=store.fs), condition


def load_validated(
    store: Store, cfg: DatasetConfig, start: datetime | None = None, end: datetime | None = None,
    entities: list[str] | None = None,
) -> pl.DataFrame:
    """Rows of the validated layer with start <= timestamp < end, sorted by entity, timestamp.

    Only the entities of the config's scope (`cfg.group_entities()`, narrowed further
    by `entities`) are read. Only the date partitions overlapping the range are
    opened, and the filters are pushed down into the Parquet scan.
    """
    dataset, condition = _validated_scan(store, cfg, start, end, entities)
    if dataset is None:
        return pl.from_arrow(arrow_schemas.validated_schema(cfg).empty_table())  # type: ignore[return-value]
    frame = pl.from_arrow(dataset.to_table(filter=condition))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort([arrow_schemas.ENTITY, arrow_schemas.TIMESTAMP])


def entity_rows(
    store: Store, cfg: DatasetConfig, start: datetime | None = None, end: datetime | None = None,
) -> dict[str, int]:
    """Rows per entity in [start, end) within the config's scope; reads the entity and
    timestamp columns only (cheap enough to plan a fleet's shards from)."""
    dataset, condition = _validated_scan(store, cfg, start, end, None)
    if dataset is None:
        return {}
    table = dataset.to_table(columns=[arrow_schemas.ENTITY], filter=condition)
    counts = pl.from_arrow(table).group_by(arrow_schemas.ENTITY).len().sort(arrow_schemas.ENTITY)
    return dict(counts.iter_rows())


# -- whole source, or one night -------------------------------------------------------


@dataclass(frozen=True)
class IngestReport:
    """What an ingestion run filed: one outcome per batch, and the totals derived from them."""

    dataset: str
    batches: list[BatchOutcome]

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
    def quarantined(self) -> list[BatchOutcome]:
        return [b for b in self.batches if b.status == "quarantined"]

    def to_json(self) -> dict[str, Any]:
        """The flow-result / artifact form (totals included)."""
        return {"dataset": self.dataset, "rows_in": self.rows_in,
                "rows_validated": self.rows_validated, "rows_quarantined": self.rows_quarantined,
                "batches_validated": len(self.batches) - len(self.quarantined),
                "batches_quarantined": len(self.quarantined),
                "batches": [b.to_dict() for b in self.batches]}


def ingest_urls(store: Store, cfg: DatasetConfig, urls: list[str]) -> IngestReport:
    """File each batch; a bad batch is quarantined, never fatal."""
    report = IngestReport(cfg.name, [ingest_batch(store, cfg, url) for url in urls])
    run_logger(__name__).info(
        "dataset '%s': %d batches, %d rows validated, %d rows quarantined",
        cfg.name, len(report.batches), report.rows_validated, report.rows_quarantined,
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


@task(name="ingest-source", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest_source(cfg: DatasetConfig) -> IngestReport:
    """Ingest every batch of a dataset's source into its store.

    Safe to retry as a whole: a batch already filed returns its recorded outcome,
    and a re-filed batch rewrites the same keys.
    """
    return ingest_urls(store_for(cfg), cfg, list_batches(cfg))


@task(name="ingest-night", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest_night(cfg: DatasetConfig, day: date) -> IngestReport:
    """Validate the night's batches and its context day's (bad ones go to quarantine)."""
    urls = list_batches(cfg)
    chosen = batches_for_night(urls, day)
    if chosen is None:
        chosen = urls
    else:
        run_logger(__name__).info("%s %s: ingesting %d of %d batches", cfg.name, day,
                                  len(chosen), len(urls))
    return ingest_urls(store_for(cfg), cfg, chosen)
