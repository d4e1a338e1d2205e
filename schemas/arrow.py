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
