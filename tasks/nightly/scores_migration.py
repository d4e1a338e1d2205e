"""`nightowl migrate`, the scores part: `scores/<ds>/date=D/part-<scope>-<n>.parquet` (the
night's shards, as the old `commit_night` left them) become the scores Delta table, in one
marked commit (see tasks.data.validated_migration). Nights the table already holds are newer: kept."""

from __future__ import annotations

from datetime import date

import polars as pl
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from schemas.config import DatasetConfig
from tasks.data import tables
from tasks.data.validated_migration import MIGRATION, SCORES_PART, Migrated, old_files, removed
from tasks.nightly import scores_table
from tasks.store import Store


def migrate_scores(store: Store, cfg: DatasetConfig) -> Migrated:
    key = scores_table.scores_key(cfg)
    result = Migrated(key)
    old = old_files(store, key, tables.open_table(store, key))
    if not old:
        return result

    def night(day: date, keys: list[str]) -> pl.DataFrame:
        frames = [pl.from_arrow(store.read_parquet(k)).with_columns(
            pl.lit(day).alias(scores_table.DAY), pl.lit(m.group(1)).alias(scores_table.SCOPE))
            for k in keys if (m := SCORES_PART.fullmatch(k.rsplit("/", 1)[-1]))]
        return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()

    def attempt(table: DeltaTable | None) -> None:
        if table is not None and table.transaction_version(MIGRATION) is not None:
            return
        held = set() if table is None else {date.fromisoformat(p[scores_table.DAY])
                                             for p in table.partitions()}
        nights = [n for d in sorted(old) if d not in held and (n := night(d, old[d])).height]
        if not nights:
            return
        rows = pl.concat(nights, how="diagonal_relaxed")
        result.rows = rows.height
        write_deltalake(table if table is not None else tables.table_uri(store, key),
                        rows.to_arrow(), mode="append", schema_mode="merge",
                        partition_by=[scores_table.DAY, scores_table.SCOPE],
                        commit_properties=CommitProperties(
                            app_transactions=[Transaction(MIGRATION, 1)]),
                        storage_options=tables.storage_options(store),
                        writer_properties=tables.writer_properties())
        result.committed = True

    tables.transact(store, key, attempt)
    return removed(store, result, old)
