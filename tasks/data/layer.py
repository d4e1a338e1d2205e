"""The validated layer: date partitions committed through a small per-day manifest.

Why a manifest: (entity, timestamp) must be unique across the whole layer, whatever the
file names, however often a batch is re-delivered and however many ingestions run at
once. Each day folder holds `_manifest.json`, naming the one committed part of every
source that has rows on that day, with per-entity row counts and time ranges. A
source's rows change only by a compare-and-swap of that manifest (ETag / If-Match on
S3, a file lock locally), retried on conflict, so two writers can never both commit on
stale knowledge. Part files are content-addressed (`part-<source>-<sha>.parquet`):
writing one is idempotent, and one that no manifest names is invisible to
`load_validated` and is removed once superseded.

Policy for keys that collide (timestamps compared as naive UTC):
- the same source again (same URL): its parts replace its old ones, on every day it
  covered before, so a corrected file covering fewer days leaves no stale day behind;
- another source, identical values: the new rows are dropped as duplicates (counted);
- another source, different values: the batch is refused with the colliding keys
  (`on_conflict = "quarantine"`, the default) or wins (`"replace"`: the other
  source's part is rewritten without those keys, and what was replaced is recorded).
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from schemas import arrow as arrow_schemas
from schemas.config import DatasetConfig
from tasks.store import Store, sha256_bytes

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
KEY = [arrow_schemas.ENTITY, arrow_schemas.TIMESTAMP]
SAMPLE = 5  # colliding keys quoted in a one-line reason; all of them go to the report


def dataset_prefix(cfg: DatasetConfig) -> str:
    return f"datasets/{cfg.name}"


def partition_key(cfg: DatasetConfig, day: date, part_id: str) -> str:
    return f"{dataset_prefix(cfg)}/validated/date={day.isoformat()}/part-{part_id}.parquet"


def manifest_key(cfg: DatasetConfig, day: date) -> str:
    return f"{dataset_prefix(cfg)}/validated/date={day.isoformat()}/{MANIFEST}"


def validated_days(store: Store, cfg: DatasetConfig, with_rows: bool = False) -> list[date]:
    """Every day folder of the validated layer, sorted; `with_rows`: only days that hold
    committed rows (a corrected re-delivery can leave a day's manifest empty)."""
    days = []
    for folder in store.list_dirs(f"{dataset_prefix(cfg)}/validated"):
        try:
            days.append(date.fromisoformat(folder.removeprefix("date=")))
        except ValueError:
            continue
    if with_rows:
        held = set(committed_parts(store, cfg, days, by_day=True))
        days = [d for d in days if d in held]
    return sorted(days)


# -- parts and their summaries ---------------------------------------------------------


def parquet_bytes(table: pa.Table) -> bytes:
    """zstd, dictionary-encoding only the entity: trying dictionaries on float sensor columns
    first made writing a 368k x 41 part 3.5x slower for a 10% larger file."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", use_dictionary=[arrow_schemas.ENTITY])
    return buf.getvalue()


def entity_stats(frame: pl.DataFrame) -> dict[str, list[Any]]:
    """entity -> [rows, first timestamp, last timestamp] (ISO): for overlap tests and volumes."""
    stats = frame.group_by(arrow_schemas.ENTITY).agg(
        pl.len().alias("rows"),
        pl.col(arrow_schemas.TIMESTAMP).min().alias("lo"),
        pl.col(arrow_schemas.TIMESTAMP).max().alias("hi"),
    ).sort(arrow_schemas.ENTITY)
    return {e: [int(n), lo.isoformat(), hi.isoformat()] for e, n, lo, hi in stats.iter_rows()}


def split_days(table: pa.Table) -> dict[date, pl.DataFrame]:
    """A canonical validated table cut into calendar days (UTC)."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    days = frame.get_column(arrow_schemas.TIMESTAMP).dt.date().alias("__day")
    return {day: part.drop("__day")
            for (day,), part in frame.with_columns(days).group_by("__day", maintain_order=True)}


def _overlapping(mine: dict[str, list[Any]], theirs: dict[str, list[Any]]) -> list[str]:
    """Entities both parts hold with intersecting time ranges (only those can collide)."""
    return [e for e, (_, lo, hi) in mine.items()
            if e in theirs and lo <= theirs[e][2] and theirs[e][1] <= hi]


@dataclass
class Collisions:
    """Keys of a new batch that already exist under other sources."""

    duplicates: int = 0  # identical values: dropped from the new batch
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # different values

    def sample(self) -> str:
        shown = ", ".join(f"({c['entity']}, {c['timestamp']}) in "
                          f"{posixpath.basename(c['source']) or c['source']}"
                          for c in self.conflicts[:SAMPLE])
        more = len(self.conflicts) - SAMPLE
        return shown + (f" and {more} more" if more > 0 else "")


class PartCache:
    """Parts are content-addressed, so a part read once is valid for as long as it exists."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._frames: dict[str, pl.DataFrame] = {}

    def frame(self, key: str) -> pl.DataFrame:
        if key not in self._frames:
            frame = pl.from_arrow(self.store.read_parquet(key))
            assert isinstance(frame, pl.DataFrame)
            self._frames[key] = frame
        return self._frames[key]


def _matches(new: pl.DataFrame, other: pl.DataFrame, entities: list[str],
             values: list[str]) -> pl.DataFrame:
    """Rows of `new` whose key exists in `other`, with a flag: every value identical?"""
    theirs = other.filter(pl.col(arrow_schemas.ENTITY).is_in(entities))
    joined = new.filter(pl.col(arrow_schemas.ENTITY).is_in(entities)).join(
        theirs, on=KEY, how="inner", suffix="__theirs")
    same = pl.all_horizontal([pl.col(v) == pl.col(f"{v}__theirs") for v in values])
    return joined.select(*KEY, same.alias("identical"))


# -- one day's commit -----------------------------------------------------------------


@dataclass
class DayPlan:
    """What committing one source's rows on one day does."""

    day: date
    rows: pl.DataFrame  # after dropping duplicates
    collisions: Collisions
    replaced: dict[str, pl.DataFrame]  # other source id -> its part without the replaced keys
    replaced_keys: list[dict[str, Any]]


def plan_day(cfg: DatasetConfig, manifest: dict[str, Any] | None, source_id: str,
             rows: pl.DataFrame, cache: PartCache) -> DayPlan:
    """Compare one day's new rows with every other source's committed part of that day."""
    values = [c for c in rows.columns if c not in KEY]
    day = rows.get_column(arrow_schemas.TIMESTAMP).dt.date()[0]
    plan = DayPlan(day, rows, Collisions(), {}, [])
    mine = entity_stats(rows)
    for other_id, entry in sorted((manifest or {}).get("parts", {}).items()):
        if other_id == source_id:
            continue
        entities = _overlapping(mine, entry["entities"])
        if not entities:
            continue
        other = cache.frame(entry["key"])
        found = _matches(plan.rows, other, entities, values)
        if found.height == 0:
            continue
        same = found.filter("identical").select(KEY)
        different = found.filter(~pl.col("identical")).select(KEY)
        plan.collisions.duplicates += same.height
        plan.rows = plan.rows.join(same, on=KEY, how="anti")
        conflicts = [{"entity": e, "timestamp": t.isoformat(), "source": entry.get("source", other_id)}
                     for e, t in different.iter_rows()]
        if conflicts and cfg.validation.on_conflict == "replace":
            plan.replaced[other_id] = other.join(different, on=KEY, how="anti")
            plan.replaced_keys += conflicts
        else:
            plan.collisions.conflicts += conflicts
    return plan


def _entry(cfg: DatasetConfig, store: Store, source_id: str, frame: pl.DataFrame,
           source: str, day: date) -> dict[str, Any]:
    """Write a part (content-addressed: idempotent) and describe it for the manifest."""
    table = frame.to_arrow().cast(arrow_schemas.validated_schema(cfg))
    data = parquet_bytes(table)
    key = partition_key(cfg, day, f"{source_id}-{sha256_bytes(data)[:16]}")
    if not store.exists(key):
        store.write_bytes(key, data)
    return {"key": key, "rows": frame.height, "source": source, "entities": entity_stats(frame)}


class ConflictError(RuntimeError):
    """Rows of the batch collide with rows of another source that have different values."""

    def __init__(self, collisions: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(collisions)} keys collide with different values")
        self.collisions = collisions


@dataclass
class CommitResult:
    """What a source's commit changed across the layer."""

    keys: list[str] = field(default_factory=list)
    days: list[str] = field(default_factory=list)
    rows: int = 0
    duplicates: int = 0
    replaced: list[dict[str, Any]] = field(default_factory=list)


def read_manifest(store: Store, cfg: DatasetConfig, day: date) -> dict[str, Any] | None:
    key = manifest_key(cfg, day)
    data, _ = store.read_tagged(key)
    return json.loads(data) if data is not None else adopt_legacy(store, cfg, day)


def adopt_legacy(store: Store, cfg: DatasetConfig, day: date) -> dict[str, Any] | None:
    """A manifest for a day written before manifests existed (`part-<source>.parquet` files)."""
    parts = _legacy_parts(store, cfg, day)
    if not parts:
        return None
    cache = PartCache(store)
    entries = {}
    for key in parts:
        source_id = LEGACY_PART.fullmatch(key.rsplit("/", 1)[-1]).group(1)  # type: ignore[union-attr]
        frame = cache.frame(key)
        entries[source_id] = {"key": key, "rows": frame.height, "source": source_id,
                              "entities": entity_stats(frame)}
    return {"date": day.isoformat(), "parts": entries, "revision": 0}


def commit_source(store: Store, cfg: DatasetConfig, source_id: str, source: str,
                  rows_by_day: dict[date, pl.DataFrame], previous_days: Iterable[date]
                  ) -> CommitResult:
    """Make `rows_by_day` the source's rows on every day, and remove it from days it left.

    Days commit in date order, each by compare-and-swap of its manifest. All days are
    checked for conflicts before any is committed; a conflict that only appears while
    committing (a concurrent delivery of another source won a day) rolls back the days
    this call already committed and raises ConflictError, leaving the layer as it was.
    """
    cache = PartCache(store)
    days = sorted(rows_by_day)
    conflicts = _conflicts(store, cfg, source_id, rows_by_day, cache)
    if conflicts:
        raise ConflictError(conflicts)

    result, undo, superseded = CommitResult(), [], []
    try:
        for day in days:
            entry, before, plan, old = _commit_day(store, cfg, source_id, source,
                                                   rows_by_day[day], cache)
            undo.append((day, before))
            superseded += old
            result.duplicates += plan.collisions.duplicates
            result.replaced += plan.replaced_keys
            if entry is not None:
                result.keys.append(entry["key"])
                result.days.append(day.isoformat())
                result.rows += entry["rows"]
    except ConflictError:
        for day, before in reversed(undo):
            _restore_day(store, cfg, source_id, day, before)
        kept = {b["key"] for _, b in undo if b is not None}
        store.delete_many(sorted(set(result.keys) - kept))
        # Report every colliding key as the layer now stands, not only the first day's.
        raise ConflictError(_conflicts(store, cfg, source_id, rows_by_day, cache)) from None
    for day in sorted(set(previous_days) - set(days)):
        superseded += _remove_from_day(store, cfg, source_id, day)
    superseded += _orphans(store, cfg, source_id, days)
    store.delete_many(sorted(set(superseded) - set(result.keys)))
    return result


def _conflicts(store: Store, cfg: DatasetConfig, source_id: str,
               rows_by_day: dict[date, pl.DataFrame], cache: PartCache) -> list[dict[str, Any]]:
    """Every key of the batch that another source holds with different values."""
    found = []
    for day in sorted(rows_by_day):
        found += plan_day(cfg, read_manifest(store, cfg, day), source_id, rows_by_day[day],
                          cache).collisions.conflicts
    return found


def _orphans(store: Store, cfg: DatasetConfig, source_id: str, days: list[date]) -> list[str]:
    """This source's part files that no manifest names (left by a run killed mid-commit)."""
    committed = set(committed_parts(store, cfg, days))
    found = []
    for day in days:
        folder = f"{dataset_prefix(cfg)}/validated/date={day.isoformat()}"
        found += [k for k in store.list(folder)
                  if k.rsplit("/", 1)[-1].startswith(f"part-{source_id}-") and k not in committed]
    return found


def _commit_day(store: Store, cfg: DatasetConfig, source_id: str, source: str,
                rows: pl.DataFrame, cache: PartCache
                ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, DayPlan, list[str]]:
    """One day's compare-and-swap: (our entry, our entry before, the plan, keys superseded)."""
    day = rows.get_column(arrow_schemas.TIMESTAMP).dt.date()[0]
    state: dict[str, Any] = {}
    written: list[tuple[pl.DataFrame, dict[str, Any]]] = []  # a retry reuses the encoded part

    def ours(frame: pl.DataFrame) -> dict[str, Any] | None:
        if frame.height == 0:
            return None
        for done, entry in written:
            if done.equals(frame):
                return entry
        written.append((frame, _entry(cfg, store, source_id, frame, source, day)))
        return written[-1][1]

    def change(current: dict[str, Any] | None) -> dict[str, Any]:
        current = current or adopt_legacy(store, cfg, day) or {
            "date": day.isoformat(), "parts": {}, "revision": 0}
        plan = plan_day(cfg, current, source_id, rows, cache)
        if plan.collisions.conflicts:
            raise ConflictError(plan.collisions.conflicts)
        parts = dict(current["parts"])
        entry = ours(plan.rows)
        old = [parts[source_id]["key"]] if source_id in parts else []
        if entry is None:
            parts.pop(source_id, None)
        else:
            parts[source_id] = entry
        for other_id, frame in plan.replaced.items():
            old.append(parts[other_id]["key"])
            if frame.height:
                parts[other_id] = _entry(cfg, store, other_id, frame, parts[other_id]["source"], day)
            else:
                parts.pop(other_id)
        state.update(entry=entry, before=current["parts"].get(source_id), plan=plan, old=old)
        if parts == current["parts"]:
            return current  # already committed (a rerun, or a concurrent run of the same batch)
        return {"date": day.isoformat(), "parts": parts, "revision": current["revision"] + 1}

    store.update_json(manifest_key(cfg, day), change)
    # A concurrent GC of a superseded part with the same content may have removed ours.
    if state["entry"] is not None and not store.exists(state["entry"]["key"]):
        _entry(cfg, store, source_id, state["plan"].rows, source, day)
    return state["entry"], state["before"], state["plan"], [
        k for k in state["old"] if state["entry"] is None or k != state["entry"]["key"]]


def _remove_from_day(store: Store, cfg: DatasetConfig, source_id: str, day: date) -> list[str]:
    """Drop a source from a day it no longer covers; returns the part key it had there."""
    removed: list[str] = []

    def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
        current = current or adopt_legacy(store, cfg, day)
        removed.clear()
        if current is None or source_id not in current["parts"]:
            return current
        parts = dict(current["parts"])
        removed.append(parts.pop(source_id)["key"])
        return {**current, "parts": parts, "revision": current["revision"] + 1}

    store.update_json(manifest_key(cfg, day), change)
    return removed


def _restore_day(store: Store, cfg: DatasetConfig, source_id: str, day: date,
                 before: dict[str, Any] | None) -> None:
    """Undo one day of a commit that could not finish: the source's entry as it was."""
    def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
        if current is None:
            return current
        parts = dict(current["parts"])
        if before is None:
            parts.pop(source_id, None)
        else:
            parts[source_id] = before
        return {**current, "parts": parts, "revision": current["revision"] + 1}

    store.update_json(manifest_key(cfg, day), change)


# -- reading ---------------------------------------------------------------------------


def committed_parts(store: Store, cfg: DatasetConfig, days: list[date],
                    by_day: bool = False) -> Any:
    """Keys of the parts the manifests of these days name (legacy days: their legacy part
    files); `by_day`: {day: keys} for the days that have any."""
    keys = {manifest_key(cfg, d): d for d in days}
    found = store.read_many(list(keys))
    parts: dict[date, list[str]] = {}
    for key, day in keys.items():
        if key in found:
            named = [e["key"] for e in json.loads(found[key])["parts"].values()]
        else:
            named = _legacy_parts(store, cfg, day)
        if named:
            parts[day] = sorted(named)
    return parts if by_day else sorted(k for keys_ in parts.values() for k in keys_)


LEGACY_PART = re.compile(r"part-([0-9a-f]{16})\.parquet")


def _legacy_parts(store: Store, cfg: DatasetConfig, day: date) -> list[str]:
    """Parts written before manifests (`part-<source-id>.parquet`). Content-addressed parts
    (`part-<source-id>-<sha>.parquet`) count only when a manifest names them: one that no
    manifest names is a commit that never happened."""
    folder = f"{dataset_prefix(cfg)}/validated/date={day.isoformat()}"
    return [k for k in store.list(folder) if LEGACY_PART.fullmatch(k.rsplit("/", 1)[-1])]


def validated_scan(
    store: Store, cfg: DatasetConfig, start: datetime | None, end: datetime | None,
    entities: list[str] | None = None,
) -> tuple[pads.Dataset | None, pads.Expression | None]:
    """The committed parts of the days overlapping [start, end) as one Parquet dataset, and
    the row filter (time range, the scope's entities) to push down into its scan."""
    start, end = _as_naive_utc(start), _as_naive_utc(end)
    days = [d for d in validated_days(store, cfg) if _day_in_range(d, start, end)]
    paths = [store.path(k) for k in committed_parts(store, cfg, days)]
    if not paths:
        return None, None
    conditions = [c for c in [_range_filter(start, end)] if c is not None]
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


def _scan(store: Store, cfg: DatasetConfig, start: datetime | None, end: datetime | None,
          entities: list[str] | None, columns: list[str] | None = None) -> pa.Table | None:
    """Read the scan; a part removed by a concurrent commit between listing and reading
    makes it list again."""
    for attempt in range(3):
        dataset, condition = validated_scan(store, cfg, start, end, entities)
        if dataset is None:
            return None
        try:
            return dataset.to_table(columns=columns, filter=condition)
        except OSError:  # FileNotFoundError locally; fsspec/pyarrow wrap it on object stores
            if attempt == 2:
                raise
    return None


def load_validated(
    store: Store, cfg: DatasetConfig, start: datetime | None = None, end: datetime | None = None,
    entities: list[str] | None = None,
) -> pl.DataFrame:
    """Rows of the validated layer with start <= timestamp < end, sorted by entity, timestamp.

    Only committed parts are read; only the entities of the config's scope
    (`cfg.group_entities()`, narrowed further by `entities`), and only the date
    partitions overlapping the range; the filters are pushed down into the Parquet scan.
    """
    table = _scan(store, cfg, start, end, entities)
    if table is None:
        return pl.from_arrow(arrow_schemas.validated_schema(cfg).empty_table())  # type: ignore[return-value]
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.sort(KEY)


def entity_rows(
    store: Store, cfg: DatasetConfig, start: datetime | None = None, end: datetime | None = None,
) -> dict[str, int]:
    """Rows per entity in [start, end) within the config's scope; reads the entity column
    only (cheap enough to plan a fleet's shards from)."""
    table = _scan(store, cfg, start, end, None, columns=[arrow_schemas.ENTITY])
    if table is None:
        return {}
    counts = pl.from_arrow(table).group_by(arrow_schemas.ENTITY).len().sort(arrow_schemas.ENTITY)
    return dict(counts.iter_rows())


def _day_in_range(day: date, start: datetime | None, end: datetime | None) -> bool:
    day_start = datetime.combine(day, datetime.min.time())
    return not ((start is not None and day_start + timedelta(days=1) <= start)
                or (end is not None and day_start >= end))


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


def day_entity_rows(store: Store, cfg: DatasetConfig, days: list[date]
                    ) -> dict[str, dict[str, int]]:
    """day -> entity -> committed rows, from the manifests alone (no data is read)."""
    keys = {manifest_key(cfg, d): d for d in days}
    out: dict[str, dict[str, int]] = {}
    for key, data in store.read_many(list(keys)).items():
        counts: dict[str, int] = {}
        for entry in json.loads(data)["parts"].values():
            for entity, (rows, _, _) in entry["entities"].items():
                counts[entity] = counts.get(entity, 0) + int(rows)
        out[keys[key].isoformat()] = counts
    return out
