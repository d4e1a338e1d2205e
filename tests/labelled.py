"""A tiny dataset with a validated layer, for the labels and review tests (no model needed)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from schemas.config import DatasetConfig, parse_config
from tasks.feedback.labels import labels_key
from tasks.store import Store
from tests.tiny import tiny_config, write_config

ENTITY = "machine-00"
DAY1 = "2026-01-06T01:00:00"  # inside the tiny data (2026-01-05 .. 2026-01-10, 30 min rows)
DAY1_END = "2026-01-06T03:00:00"
NIGHT = datetime(2026, 1, 9)  # tests.tiny.NIGHTS[0]


def ingested(root: Path, **overrides) -> tuple[DatasetConfig, str]:
    """A tiny dataset with its validated layer filled (no model needed for labels)."""
    from tasks.data.ingest import ingest_source
    from tasks.data.synthetic import materialize

    data = tiny_config(root, **overrides)
    cfg = parse_config(data)
    materialize(cfg.source.synthetic, cfg.source.path)
    ingest_source.fn(cfg)
    return cfg, write_config(root, data)


def without_labels(cfg: DatasetConfig) -> DatasetConfig:
    """`cfg` after removing its labels table (the validated layer stays)."""
    store = Store(cfg.store.root)
    if store.exists(labels_key(cfg)):
        store.fs.rm(store.path(labels_key(cfg)), recursive=True)
    return cfg


def alert_log(cfg, peaks: dict[int, float], entity: str = ENTITY) -> None:
    """The night's alert log of `cfg`'s scope, written by the nightly path's own alerting
    (no webhook: logged, not sent); `peaks` maps a 30-minute row of the night to its score
    (threshold 1), each isolated row one segment."""
    from tasks.nightly.alert import send_alerts
    from tasks.scoring import CONTRIB_PREFIX

    n = 48
    scores = pl.DataFrame({
        "timestamp": [NIGHT + timedelta(minutes=30 * i) for i in range(n)],
        "entity": [entity] * n, "score": [peaks.get(i, 0.1) for i in range(n)],
        "threshold": [1.0] * n, "is_anomaly": [i in peaks for i in range(n)],
        "model_version": ["v-test"] * n,
        **{f"{CONTRIB_PREFIX}s0{k}": [float(k + 1)] * n for k in range(3)}})
    send_alerts(Store(cfg.store.root), cfg, NIGHT.date(), scores, None)
