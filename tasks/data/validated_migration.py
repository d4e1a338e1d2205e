"""`nightowl migrate`: a store written before the tables (Parquet parts named by per-day
`_manifest.json` files) becomes the validated Delta table (the scores table:
tasks.nightly.scores_migration, with the helpers here).

The old layout (nightowl up to the manifest protocol):
- `datasets/<ds>/validated/date=D/_manifest.json`: {"parts": {source-id: {"key", "source",
  ...}}}, each named part holding that source's committed rows of day D; parts no manifest
  names were never committed. Days from before manifests: `part-<source-id>.parquet`,
  the source's URL in its ledger entry (`datasets/<ds>/ingested/<source-id>.json`).
- `scores/<ds>/date=D/part-<scope>-<n>.parquet`: the night's shards.

Why one commit per table, marked: the old rows land together (a reader sees the store
before or after the migration), rows the table already holds win (they are newer), and
the commit carries a Delta app transaction, so a rerun, or a run after a crash between the
commit and the removal of the old files, commits nothing twice. Rows the old protocol
dropped as duplicates of another source were never stored: the surviving copy's source is
the only one the table can record.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import polars as pl
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from schemas import arrow as arrow_schemas
from schemas.config import DatasetConfig
from tasks.data import layer, tables
from tasks.store import Store

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
DAY_FOLDER = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
LEGACY_PART = re.compile(r"part-([0-9a-f]{16})\.parquet")
OLD_PART = re.compile(r"part-[0-9a-f]{16}(-[0-9a-f]{16})?\.parquet")  # not delta-rs's names
SCORES_PART = re.compile(r"part-(.+)-\d{4}\.parquet")  # scores/<ds>/date=D/part-<scope>-<n>
MIGRATION = "nightowl-migrate-v1"


@dataclass
class Migrated:
    """What `migrate` did to one table."""

    table: str
    days: list[str] = field(default_factory=list)
    rows: int = 0
    committed: bool = False  # False: nothing to do, or already done
    removed: int = 0  # old files deleted

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def old_files(store: Store, prefix: str, table: DeltaTable | None) -> dict[date, list[str]]:
    """day -> the old layout's files under a table's folder (files the table names excluded)."""
    tracked = tables.tracked_keys(store, prefix, table) if table is not None else set()
    found: dict[date, list[str]] = {}
    for key in store.list(prefix):
        folder, _, name = key[len(prefix) + 1:].rpartition("/")
        match = DAY_FOLDER.fullmatch(folder.split("/")[0]) if folder else None
        if match is None or key in tracked or not (name == MANIFEST or OLD_PART.fullmatch(name)
                                                    or SCORES_PART.fullmatch(name)):
            continue
        found.setdefault(date.fromisoformat(match.group(1)), []).append(key)
    return found


def _ledger_source(store: Store, cfg: DatasetConfig, source_id: str) -> str:
    key = f"{layer.dataset_prefix(cfg)}/ingested/{source_id}.json"
    if not store.exists(key):
        return source_id
    record = store.read_json(key)
    return (record.get("outcome") or record).get("source") or source_id


def _old_validated_day(store: Store, cfg: DatasetConfig, keys: list[str]) -> pl.DataFrame:
    """A day's committed rows under the old layout, each with its source."""
    manifests = [k for k in keys if k.endswith(MANIFEST)]
    if manifests:
        parts = [(e["key"], e.get("source") or sid)
                 for sid, e in json.loads(store.read_bytes(manifests[0]))["parts"].items()]
    else:
        parts = [(k, _ledger_source(store, cfg, m.group(1))) for k in keys
                 if (m := LEGACY_PART.fullmatch(k.rsplit("/", 1)[-1]))]
    schema = arrow_schemas.validated_schema(cfg)
    frames = [pl.from_arrow(store.read_parquet(k).select(schema.names).cast(schema))
              .with_columns(pl.lit([source]).alias(layer.SOURCES)) for k, source in parts]
    return pl.concat(frames) if frames else pl.DataFrame()


def migrate_validated(store: Store, cfg: DatasetConfig) -> Migrated:
    key = layer.validated_key(cfg)
    result = Migrated(key)
    old = old_files(store, key, tables.open_table(store, key))
    if not old:
        return result
    days = sorted(old)

    def attempt(table: DeltaTable | None) -> None:
        assert table is not None
        if table.transaction_version(MIGRATION) is not None:
            return  # committed by an earlier run that died before removing the old files
        frames = [f for d in days if (f := _old_validated_day(store, cfg, old[d])).height]
        moved = layer.with_day(pl.concat(frames)) if frames else None
        current = layer.read_days(table, cfg, days)
        if moved is not None:
            moved = moved.join(current.select(layer.KEY), on=layer.KEY, how="anti")
            result.rows = moved.height
        rows = pl.concat([current, moved.select(current.columns)]) if moved is not None else current
        write_deltalake(table, rows.sort(layer.KEY).to_arrow().cast(
            arrow_schemas.validated_table_schema(cfg)), mode="overwrite",
            predicate=layer.days_predicate(days), partition_by=[layer.DAY],
            commit_properties=CommitProperties(app_transactions=[Transaction(MIGRATION, 1)]),
            storage_options=tables.storage_options(store),
            writer_properties=tables.writer_properties(
                arrow_schemas.validated_table_schema(cfg)))
        result.committed = True

    tables.transact(store, key, attempt, create=(arrow_schemas.validated_table_schema(cfg),
                                                 [layer.DAY]))
    return removed(store, result, old)


def removed(store: Store, result: Migrated, old: dict[date, list[str]]) -> Migrated:
    """Delete the old layout's files once the table holds their rows."""
    keys = sorted(k for ks in old.values() for k in ks)
    store.delete_many(keys)
    result.days = [d.isoformat() for d in sorted(old)]
    result.removed = len(keys)
    log.info("%s: %d old files of %d days migrated (%d rows moved)", result.table,
             result.removed, len(result.days), result.rows)
    return result
