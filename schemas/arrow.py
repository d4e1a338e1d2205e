"""Arrow schemas of the Parquet layers nightowl writes.

Why fixed schemas: other teams read these files with DuckDB, Spark or polars, so
every partition of a layer must carry exactly the same column names and types,
whatever the raw source looked like (ints vs floats, tz-aware timestamps, no
entity or label column at all).
"""

from __future__ import annotations

import pyarrow as pa

from schemas.config import DatasetConfig

# Canonical column names of the validated layer. The raw names from
# `[columns]` are mapped onto these, so downstream stages never need the mapping.
TIMESTAMP = "timestamp"
ENTITY = "entity"
LABEL = "label"
DEFAULT_ENTITY = "default"  # used when the source has no entity column
# Columns the validated Delta table adds: the day partition, and every source holding the row.
DAY = "date"
SOURCES = "sources"


def validated_schema(cfg: DatasetConfig) -> pa.Schema:
    """Schema of the validated rows as nightowl's stages read them.

    timestamp: naive UTC, microseconds; entity: string; features: float64 in
    config order; label: int8 (0 when the source has no label column).
    """
    reserved = [TIMESTAMP, ENTITY, LABEL, DAY, SOURCES]
    clash = sorted(set(reserved) & set(cfg.columns.features))
    if clash:
        raise ValueError(
            f"dataset '{cfg.name}': feature names {clash} clash with the validated layer's "
            f"reserved columns {reserved}"
        )
    fields = [
        pa.field(TIMESTAMP, pa.timestamp("us"), nullable=False),
        pa.field(ENTITY, pa.string(), nullable=False),
        *(pa.field(f, pa.float64(), nullable=False) for f in cfg.columns.features),
        pa.field(LABEL, pa.int8(), nullable=False),
    ]
    return pa.schema(
        fields, metadata={b"nightowl.layer": b"validated", b"nightowl.dataset": cfg.name.encode()}
    )


def validated_table_schema(cfg: DatasetConfig) -> pa.Schema:
    """Schema of the validated Delta table (`datasets/<ds>/validated/`): the rows, their day
    (the partition column) and `sources`, every source that delivered these exact values
    (identical re-deliveries are kept as evidence, so no later change of one source can
    lose a row another still holds)."""
    base = validated_schema(cfg)
    return pa.schema([*base, pa.field(DAY, pa.date32(), nullable=False),
                      pa.field(SOURCES, pa.list_(pa.string()), nullable=False)],
                     metadata=base.metadata)


UTC_TIME = pa.timestamp("us", tz="UTC")


def labels_schema() -> pa.Schema:
    """Schema of the labels Delta table `labels/<ds>/` (tasks/feedback/labels.py).

    One row per answer, never updated: `label_id` is the idempotency key's hash (a
    re-submitted request writes nothing), `segment` what the answer is about (an alert's
    segment id, or `entity@start/end` for a period an operator named), `start`/`end` the
    labelled period, both ends included, in UTC; the latest `recorded_at` per segment is
    the current verdict, the older rows are the audit trail.
    """
    fields = [
        pa.field("label_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field(ENTITY, pa.string(), nullable=False),
        pa.field("start", UTC_TIME, nullable=False),
        pa.field("end", UTC_TIME, nullable=False),
        pa.field("verdict", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("who", pa.string(), nullable=False),
        pa.field("recorded_at", UTC_TIME, nullable=False),
        pa.field("segment", pa.string(), nullable=False),
        pa.field("note", pa.string(), nullable=True),
        pa.field("request", pa.string(), nullable=False),
    ]
    return pa.schema(fields, metadata={b"nightowl.layer": b"labels"})
