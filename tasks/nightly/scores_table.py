"""The nightly scores as a Delta table (`scores/<ds>/`), partitioned by night and scope.

Why staged parts and one commit: shards of a night run in parallel (Prefect tasks, any
worker), but a reader (DuckDB, Spark, polars, the alert and drift stages) must never see
half a night or a night mixed from two runs. So each shard writes a staged Parquet part
outside the table (`staging/scores/<ds>/date=D/`, a fresh name per attempt), and the
night's commit replaces that night's partition with all the staged rows in ONE Delta
commit (a predicate overwrite of `date = D`). A crash before it leaves the previous
snapshot; a rerun replaces the night; two runs of one night end as the last one's.
Staged parts are removed after the commit; a killed run's leftovers are swept by
maintenance (flows: maintain-tables).
"""

from __future__ import annotations

import uuid
from datetime import date

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from schemas.config import DatasetConfig
from tasks.data import tables
from tasks.store import Store, json_bytes, sha256_bytes

DAY, SCOPE = "date", "scope"  # the partition columns (not stored inside the data files)


def scores_key(cfg: DatasetConfig) -> str:
    """The store key of the dataset's scores table."""
    return f"scores/{cfg.name}"


def scores_prefix(cfg: DatasetConfig, day: date) -> str:
    """The night's partition folder in the table (one sub-folder per scope)."""
    return f"{scores_key(cfg)}/{DAY}={day.isoformat()}"


def staging_prefix(cfg: DatasetConfig, day: date | None = None) -> str:
    base = f"staging/scores/{cfg.name}"
    return base if day is None else f"{base}/{DAY}={day.isoformat()}"


def stage(store: Store, cfg: DatasetConfig, day: date, scope: str, part: str,
          frame: pl.DataFrame) -> str:
    """Write one shard's scores as a staged part (invisible to readers); returns its key."""
    key = f"{staging_prefix(cfg, day)}/part-{part}-{uuid.uuid4().hex[:8]}.parquet"
    rows = frame.with_columns(pl.lit(day).alias(DAY), pl.lit(scope).alias(SCOPE))
    store.write_parquet(key, rows.to_arrow())
    return key


def commit_night(store: Store, cfg: DatasetConfig, day: date, staged: list[str]
                 ) -> dict[str, list[str]]:
    """Replace the night in the table with the staged parts, in one commit; then remove them.

    The commit carries a Delta app transaction named after the staged parts: a retry of
    this task after its commit landed (the reply lost, or a crash before the clean-up)
    finds it and commits nothing twice. Returns scope -> the keys of the night's committed
    data files (plain Parquet: what the alert and drift stages read). No staged part: the
    night's old rows are removed.
    """
    key = scores_key(cfg)
    predicate = f"{DAY} = '{day.isoformat()}'"
    app_id = f"nightowl-night-{day.isoformat()}-{sha256_bytes(json_bytes(sorted(staged)))[:16]}"
    done = CommitProperties(app_transactions=[Transaction(app_id, 1)])

    def attempt(table: DeltaTable | None) -> None:
        if table is not None and table.transaction_version(app_id) is not None:
            return  # this very commit landed already
        if staged:
            data = pads.dataset([store.path(k) for k in staged], format="parquet",
                                filesystem=store.fs)
            target = table if table is not None else tables.table_uri(store, key)
            write_deltalake(target, data.scanner().to_reader(), mode="overwrite",
                            predicate=predicate if table is not None else None,
                            partition_by=[DAY, SCOPE], schema_mode="merge",
                            storage_options=tables.storage_options(store),
                            writer_properties=tables.writer_properties(data.schema),
                            commit_properties=done)
        elif table is not None:
            table.delete(predicate, commit_properties=done)

    tables.transact(store, key, attempt)
    store.delete_many(staged)
    return night_files(store, cfg, day)


def night_files(store: Store, cfg: DatasetConfig, day: date) -> dict[str, list[str]]:
    """scope -> store keys of the data files the latest snapshot holds for the night."""
    table = tables.open_table(store, scores_key(cfg))
    if table is None:
        return {}
    files: dict[str, list[str]] = {}
    actions = pl.from_arrow(pa.table(table.get_add_actions(flatten=True)))
    assert isinstance(actions, pl.DataFrame)
    night = actions.filter(pl.col(f"partition.{DAY}").cast(pl.String) == day.isoformat())
    for path, scope in night.select("path", f"partition.{SCOPE}").sort("path").iter_rows():
        files.setdefault(scope, []).append(f"{scores_key(cfg)}/{path}")
    return files


def read_scores(store: Store, cfg: DatasetConfig, day: date, version: int | None = None
                ) -> pl.DataFrame:
    """A night's scores from one snapshot, sorted by entity and timestamp."""
    table = tables.open_table(store, scores_key(cfg), version)
    if table is None:
        return pl.DataFrame()
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=f"{DAY} = '{day.isoformat()}'")
    frame = pl.from_arrow(dataset.to_table())
    assert isinstance(frame, pl.DataFrame)
    if frame.height == 0:
        return pl.DataFrame()
    return frame.drop(DAY, SCOPE).sort("entity", "timestamp")
