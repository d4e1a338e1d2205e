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


def validated_schema(cfg: DatasetConfig) -> pa.Schema:
    """Schema of `datasets/<ds>/validated/date=YYYY-MM-DD/part-<id>.parquet`.

    timestamp: naive UTC, microseconds; entity: string; features: float64 in
    config order; label: int8 (0 when the source has no label column).
    """
    clash = sorted({TIMESTAMP, ENTITY, LABEL} & set(cfg.columns.features))
    if clash:
        raise ValueError(
            f"dataset '{cfg.name}': feature names {clash} clash with the validated layer's "
            f"reserved columns {[TIMESTAMP, ENTITY, LABEL]}"
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
