"""The validated layer: one Delta table per dataset (`datasets/<ds>/validated/`), partitioned
by day, keyed by (entity, timestamp), every row carrying the sources that delivered it.

Why a table: (entity, timestamp) must be unique across the layer whatever the file names,
however often a batch is re-delivered and however many ingestions run at once, and every
engine that reads the layer must see a whole batch or none of it. A batch is therefore ONE
Delta commit: the days it touches are read from a snapshot, recomputed under the policy
below, and replaced by a predicate overwrite of exactly those days against that snapshot.
A concurrent commit to the same days makes delta-rs refuse ours; it is recomputed on the
new snapshot (tasks.data.tables.transact), so two overlapping ingestions end as one after
the other. A writer killed before its commit leaves files no log entry names: invisible.

Policy for keys that collide (timestamps compared as naive UTC). `sources` holds every
source whose delivery has exactly the row's values:
- the same source again (same URL): its claims are replaced: keys it no longer delivers
  lose it from `sources`, a row that no source holds any more is removed (so a corrected
  file covering fewer days leaves no stale day behind);
- another source, identical values: the source joins `sources` (counted as duplicates):
  kept as evidence, so a later correction of the first source cannot lose the row;
- another source, different values: the batch is refused with the colliding keys
  (`on_conflict = "quarantine"`, the default) or wins (`"replace"`: the row takes its
  values and only its source; what was replaced is recorded).
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import DeltaTable, write_deltalake

from schemas import arrow as arrow_schemas
from schemas.config import DatasetConfig
from tasks.data import tables
from tasks.store import Store

log = logging.getLogger(__name__)

KEY = [arrow_schemas.ENTITY, arrow_schemas.TIMESTAMP]
DAY, SOURCES = arrow_schemas.DAY, arrow_schemas.SOURCES
SAMPLE = 5  # colliding keys quoted in a one-line reason; all of them go to the report


def dataset_prefix(cfg: DatasetConfig) -> str:
    return f"datasets/{cfg.name}"


def validated_key(cfg: DatasetConfig) -> str:
    """The store key of the dataset's validated Delta table."""
    return f"{dataset_prefix(cfg)}/validated"


def partition_key(cfg: DatasetConfig, day: date) -> str:
    """The folder of one day's files in the table (what a batch outcome lists)."""
    return f"{validated_key(cfg)}/{DAY}={day.isoformat()}"


def days_of(frame: pl.DataFrame) -> list[date]:
    """The calendar days (UTC) a canonical validated frame covers, sorted."""
    return frame.get_column(arrow_schemas.TIMESTAMP).dt.date().unique().sort().to_list()


def table_version(store: Store, cfg: DatasetConfig) -> int | None:
    """The validated table's current version: what a model trained on (lineage)."""
    return tables.version_of(store, validated_key(cfg))


def validated_days(store: Store, cfg: DatasetConfig, version: int | None = None) -> list[date]:
    """The days that hold rows, from the table's log (no listing, no data read)."""
    table = tables.open_table(store, validated_key(cfg), version)
    if table is None:
        return []
    return sorted({date.fromisoformat(p[DAY]) for p in table.partitions()})


# -- one batch's commit -----------------------------------------------------------------


@dataclass
class Collisions:
    """Keys of a new batch that already exist under other sources."""

    duplicates: int = 0  # identical values: the source joins the row's sources
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # different values

    def sample(self) -> str:
        shown = ", ".join(f"({c['entity']}, {c['timestamp']}) in "
                          f"{posixpath.basename(c['source']) or c['source']}"
                          for c in self.conflicts[:SAMPLE])
        more = len(self.conflicts) - SAMPLE
        return shown + (f" and {more} more" if more > 0 else "")


class ConflictError(RuntimeError):
    """Rows of the batch collide with rows of another source that have different values."""

    def __init__(self, collisions: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(collisions)} keys collide with different values")
        self.collisions = collisions


@dataclass
class CommitResult:
    """What a source's commit changed in the table."""

    keys: list[str] = field(default_factory=list)
    days: list[str] = field(default_factory=list)
    rows: int = 0
    duplicates: int = 0
    replaced: list[dict[str, Any]] = field(default_factory=list)
    version: int | None = None  # the table version holding the batch


@dataclass
class DayPlan:
    """The touched days as they must be after the commit, and what the policy decided."""

    rows: pl.DataFrame  # every row of the touched days after the commit, table schema
    collisions: Collisions
    replaced: list[dict[str, Any]]


def plan_commit(cfg: DatasetConfig, current: pl.DataFrame, source: str,
                rows: pl.DataFrame) -> DayPlan:
    """Apply the re-delivery policy to the touched days' `current` rows (table schema)."""
    values = [c for c in rows.columns if c not in KEY]
    # 1. the source's old claims go; rows no source holds any more go with them
    others = current.with_columns(pl.col(SOURCES).list.filter(pl.element() != source)) \
        .filter(pl.col(SOURCES).list.len() > 0)
    if others.height == 0:  # a new day, or only this source's: nothing to compare with
        ours = with_day(rows.with_columns(pl.lit([source], pl.List(pl.String)).alias(SOURCES)))
        ours = ours.select(current.columns).cast(dict(current.schema))
        return DayPlan(ours if in_key_order(ours) else ours.sort(KEY), Collisions(), [])
    # 2. the new rows against what other sources hold
    joined = rows.join(others, on=KEY, how="left", suffix="__theirs", coalesce=True)
    held = pl.col(SOURCES).is_not_null()
    same = pl.all_horizontal([pl.col(v).eq_missing(pl.col(f"{v}__theirs")) for v in values])
    joined = joined.with_columns(held.alias("__held"), (held & same).alias("__same"))
    different = joined.filter(pl.col("__held") & ~pl.col("__same"))
    conflicts = [{"entity": e, "timestamp": t.isoformat(), "source": s[0]}
                 for e, t, s in different.select(*KEY, SOURCES).iter_rows()]
    collisions = Collisions(int(joined["__same"].sum()), [])
    replace = cfg.validation.on_conflict == "replace"
    if conflicts and not replace:
        collisions.conflicts = conflicts
    new_sources = pl.when(pl.col("__same")).then(pl.col(SOURCES).list.concat(pl.lit([source])))
    ours = joined.select(
        *rows.columns, new_sources.otherwise(pl.lit([source])).alias(SOURCES))
    kept = others.join(rows.select(KEY), on=KEY, how="anti")
    after = pl.concat([kept, with_day(ours)], how="diagonal_relaxed")
    return DayPlan(after.select(current.columns).sort(KEY), collisions,
                   conflicts if replace else [])


def in_key_order(frame: pl.DataFrame) -> bool:
    """Rows already ordered by (entity, timestamp), no key twice? One vectorised pass,
    cheaper than a sort (a feed usually delivers in that order)."""
    e, t = pl.col(arrow_schemas.ENTITY), pl.col(arrow_schemas.TIMESTAMP)
    ordered = (e > e.shift(1)) | ((e == e.shift(1)) & (t > t.shift(1)))
    return bool(frame.select(ordered.slice(1).all()).item()) if frame.height > 1 else True


def with_day(frame: pl.DataFrame) -> pl.DataFrame:
    """The partition column, derived from the timestamp (so it can never disagree)."""
    return frame.with_columns(pl.col(arrow_schemas.TIMESTAMP).dt.date().alias(DAY))


def days_predicate(days: list[date]) -> str:
    return f"{DAY} IN ({', '.join(repr(d.isoformat()) for d in days)})"


def read_days(table: DeltaTable | None, cfg: DatasetConfig, days: list[date]) -> pl.DataFrame:
    schema = arrow_schemas.validated_table_schema(cfg)
    if table is None or not days:
        return pl.from_arrow(schema.empty_table())  # type: ignore[return-value]
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=days_predicate(days))
    frame = pl.from_arrow(dataset.to_table(columns=schema.names))
    assert isinstance(frame, pl.DataFrame)
    return frame


def commit_source(store: Store, cfg: DatasetConfig, source: str, rows: pl.DataFrame,
                  previous_days: list[date]) -> CommitResult:
    """Make `rows` (canonical validated rows) the source's rows, in one commit.

    Touched: the batch's days and the days the source held before (`previous_days`, from
    its ledger). Raises ConflictError (nothing written) when another source holds some of
    the keys with different values and the policy is quarantine.
    """
    delivered = days_of(rows)
    days = sorted(set(delivered) | set(previous_days))
    schema = arrow_schemas.validated_table_schema(cfg)

    def attempt(table: DeltaTable | None) -> CommitResult:
        current = read_days(table, cfg, days)
        plan = plan_commit(cfg, current, source, rows)
        if plan.collisions.conflicts:
            raise ConflictError(plan.collisions.conflicts)
        result = CommitResult(
            [partition_key(cfg, d) for d in delivered], [d.isoformat() for d in delivered],
            rows.height, plan.collisions.duplicates, plan.replaced,
            None if table is None else table.version())
        if plan.rows.equals(current.sort(KEY)):
            return result  # already committed (a rerun, or a concurrent run of this batch)
        assert table is not None  # transact created it
        write_deltalake(table, tables.in_row_groups(plan.rows.to_arrow().cast(schema)),
                        mode="overwrite",
                        predicate=days_predicate(days), partition_by=[DAY],
                        storage_options=tables.storage_options(store),
                        writer_properties=tables.writer_properties(schema))
        result.version = table.version()  # the object follows its own commit
        return result

    return tables.transact(store, validated_key(cfg), attempt, create=(schema, [DAY]))


# -- reading ---------------------------------------------------------------------------


def _scope(cfg: DatasetConfig, entities: list[str] | None) -> list[str] | None:
    scope = cfg.group_entities()
    if entities is None:
        return scope
    return entities if scope is None else [e for e in entities if e in set(scope)]


def validated_scan(
    store: Store, cfg: DatasetConfig, start: datetime | None, end: datetime | None,
    entities: list[str] | None = None, version: int | None = None,
) -> tuple[pads.Dataset | None, pads.Expression | None]:
    """One snapshot of the table as a pyarrow dataset, and the row filter (days, time range,
    the scope's entities) that prunes partitions and files and is pushed into the scan."""
    table = tables.open_table(store, validated_key(cfg), version)
    if table is None:
        return None, None
    start, end = _as_naive_utc(start), _as_naive_utc(end)
    conditions = [c for c in [_range_filter(start, end)] if c is not None]
    wanted = _scope(cfg, entities)
    if wanted is not None:
        conditions.append(pads.field(arrow_schemas.ENTITY).isin(wanted))
    days = [f"{DAY} >= '{start.date().isoformat()}'"] if start is not None else []
    days += [f"{DAY} <= '{end.date().isoformat()}'"] if end is not None else []
    condition = None
    for c in conditions:
        condition = c if condition is None else condition & c
    return table.to_pyarrow_dataset(file_pruning_predicate=" AND ".join(days) or None), condition


def load_validated(
    store: Store, cfg: DatasetConfig, start: datetime | None = None, end: datetime | None = None,
    entities: list[str] | None = None, version: int | None = None,
) -> pl.DataFrame:
    """Rows of the validated layer with start <= timestamp < end, sorted by entity, timestamp.

    One snapshot (the latest, or `version`: time travel); only the entities of the
    config's scope (`cfg.group_entities()`, narrowed further by `entities`) and only the
    day partitions overlapping the range are read; the filters are pushed into the scan.
    """
    schema = arrow_schemas.validated_schema(cfg)
    dataset, condition = validated_scan(store, cfg, start, end, entities, version)
    if dataset is None:
        return pl.from_arrow(schema.empty_table())  # type: ignore[return-value]
    frame = pl.from_arrow(dataset.to_table(columns=schema.names, filter=condition).cast(schema))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort(KEY)


def entity_rows(
    store: Store, cfg: DatasetConfig, start: datetime | None = None, end: datetime | None = None,
) -> dict[str, int]:
    """Rows per entity in [start, end) within the config's scope; reads the entity column
    only (cheap enough to plan a fleet's shards from)."""
    dataset, condition = validated_scan(store, cfg, start, end)
    if dataset is None:
        return {}
    table = dataset.to_table(columns=[arrow_schemas.ENTITY], filter=condition)
    counts = pl.from_arrow(table).group_by(arrow_schemas.ENTITY).len().sort(arrow_schemas.ENTITY)
    return dict(counts.iter_rows())


def day_entity_rows(store: Store, cfg: DatasetConfig, days: list[date]
                    ) -> dict[str, dict[str, int]]:
    """day -> entity -> rows, for the days that hold any (reads two columns)."""
    table = tables.open_table(store, validated_key(cfg))
    if table is None or not days:
        return {}
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=days_predicate(days))
    frame = pl.from_arrow(dataset.to_table(columns=[DAY, arrow_schemas.ENTITY]))
    assert isinstance(frame, pl.DataFrame)
    out: dict[str, dict[str, int]] = {}
    for day, entity, n in frame.group_by(DAY, arrow_schemas.ENTITY).len().iter_rows():
        out.setdefault(day.isoformat(), {})[entity] = int(n)
    return out


def _range_filter(start: datetime | None, end: datetime | None) -> Any:
    ts = pads.field(arrow_schemas.TIMESTAMP)
    condition = None
    if start is not None:
        condition = ts >= pa.scalar(start, pa.timestamp("us"))
    if end is not None:
        upper = ts < pa.scalar(end, pa.timestamp("us"))
        condition = upper if condition is None else condition & upper
    return condition


def _as_naive_utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)

