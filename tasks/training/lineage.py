"""Lineage: which validated rows a model version trained on, and those exact rows again.

Why: a model is audited (a false alarm, a regulator, a regression) long after later
deliveries corrected or extended the validated layer. Each version's config.json records
the validated Delta table's version it read, with the time range, splits and entities, so
the training set is rebuilt by time travel, not re-derived from today's data.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from schemas.config import DatasetConfig, SplitsConfig
from tasks.data.labelled import OperatorLabels
from tasks.data.layer import load_validated, validated_key
from tasks.data.prepare import assign_splits, labelled_rows, training_range
from tasks.feedback.labels import training_labels
from tasks.store import Store
from tasks.versions import CONFIG, VersionRef, load_version_files


class LineageError(LookupError):
    """A version that recorded no table version (trained before lineage was recorded)."""


def training_data(cfg: DatasetConfig, table_version: int | None) -> dict[str, Any]:
    """What config.json records about the rows a version trains on."""
    start, end = training_range(cfg.splits)
    return {"table": validated_key(cfg), "table_version": table_version,
            "start": start.isoformat(), "end": end.isoformat(),
            "splits": cfg.splits.model_dump(mode="json"), "entities": cfg.group_entities()}


def training_set(store: Store, cfg: DatasetConfig, ref: VersionRef) -> pl.DataFrame:
    """The rows `ref` trained and validated on, read from the table version it recorded,
    with their `split` and `label` as training assigned them: the operators' labels as the
    labels table stood at the version it recorded (time travel there too)."""
    recorded = json.loads(load_version_files(store, ref, [CONFIG])[CONFIG])  # sha256-checked
    data = recorded.get("data") or {}
    if data.get("table_version") is None:
        raise LineageError(f"{store.uri(ref.key)}: config.json records no validated table "
                           "version (trained before lineage was recorded)")
    splits = SplitsConfig.model_validate(data["splits"])
    labels_at = ((data.get("evidence") or {}).get("labels") or {}).get("table_version")
    if "evidence" not in data:  # trained before labels fed training: the rows as they were
        start, end = training_range(splits)
        rows = load_validated(store, cfg.for_group(None), start, end, data["entities"],
                              version=int(data["table_version"]))
        return assign_splits(rows, splits, with_score=False)
    scoped = cfg.for_group(recorded.get("group")).model_copy(update={"splits": splits})
    labels = (OperatorLabels() if labels_at is None
              else training_labels(scoped, store, at=int(labels_at)))
    return labelled_rows(store, scoped, labels.for_entities(data["entities"]),
                         int(data["table_version"]))
