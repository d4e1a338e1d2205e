"""Operators' labels as the data stage sees them: plain periods, applied to prepared rows.

Why here and not in tasks/feedback: the data stage must not reach the labels table's
machinery (tests/test_layout.py). The flows read the labels (tasks.feedback.labels) and
hand them over as these frozen values; this module only says what a labelled period does
to a row:

- `anomaly`: the row's label is 1. Inside the train range that excludes it from training
  (`train_on_normal_only`); outside it, it is validation evidence.
- `normal` (a dismissed alert): the row's label is 0; normal evidence.
- a labelled row outside the train range joins the validation split, so the evidence that
  calibration and selection rest on grows night by night.

`unsure` answers never get here (the flows drop them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import polars as pl

from tasks.evaluation.selection import event_ids

OPERATOR = "operator_label"  # prepared rows: 1 where an operator's label set the row's label
ONE_TICK = timedelta(microseconds=1)  # a labelled period's end is included


@dataclass(frozen=True)
class LabelledPeriod:
    """One operator answer: the entity's rows from `start` to `end` (included) are `verdict`."""

    entity: str
    start: datetime
    end: datetime
    verdict: Literal["anomaly", "normal"]


@dataclass(frozen=True)
class OperatorLabels:
    """The labels one training run uses, and the labels table version they were read at."""

    periods: tuple[LabelledPeriod, ...] = ()
    table_version: int | None = None

    def for_entities(self, entities: list[str] | None) -> OperatorLabels:
        """Only the periods of a scope's entities (None: all)."""
        if entities is None:
            return self
        keep = set(entities)
        return OperatorLabels(tuple(p for p in self.periods if p.entity in keep),
                              self.table_version)

    def to_json(self) -> dict[str, Any]:
        return {"table_version": self.table_version, "periods": len(self.periods),
                "anomaly": sum(p.verdict == "anomaly" for p in self.periods),
                "normal": sum(p.verdict == "normal" for p in self.periods)}


@dataclass(frozen=True)
class Evidence:
    """What the validation split rests on: events and normal rows, by where the label came from."""

    events_from_slices: int = 0
    events_from_labels: int = 0
    normal_rows_from_labels: int = 0
    labels: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"events_from_slices": self.events_from_slices,
                "events_from_labels": self.events_from_labels,
                "normal_rows_from_labels": self.normal_rows_from_labels,
                "labels": self.labels}


def naive_utc(moment: datetime) -> datetime:
    """The validated layer's timestamps are naive UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def apply_labels(frame: pl.DataFrame, labels: OperatorLabels, train_start: datetime,
                 train_end: datetime) -> pl.DataFrame:
    """`frame` (with `split` and `label`) with the operators' verdicts applied and the
    `operator_label` column; anomaly wins where an anomaly and a normal period overlap."""
    ts, entity = pl.col("timestamp"), pl.col("entity")

    def covered(verdict: str) -> pl.Expr:
        expr = pl.lit(False)
        for p in labels.periods:
            if p.verdict == verdict:
                expr |= ((entity == p.entity) & (ts >= naive_utc(p.start))
                         & (ts < naive_utc(p.end) + ONE_TICK))
        return expr

    anomaly, normal = covered("anomaly"), covered("normal")
    in_train = (ts >= naive_utc(train_start)) & (ts < naive_utc(train_end))
    return frame.with_columns(
        label=pl.when(anomaly).then(1).when(normal).then(0).otherwise(pl.col("label"))
        .cast(frame.schema["label"]),
        split=pl.when((anomaly | normal) & ~in_train).then(pl.lit("validation"))
        .otherwise(pl.col("split")),
        **{OPERATOR: (anomaly | normal).cast(pl.Int8)})


def periods_outside(labels: OperatorLabels, start: datetime, end: datetime
                    ) -> list[LabelledPeriod]:
    """The labelled periods not wholly inside [start, end): their rows must be read too."""
    return [p for p in labels.periods
            if naive_utc(p.start) < naive_utc(start) or naive_utc(p.end) >= naive_utc(end)]


def sampling_step(frame: pl.DataFrame) -> timedelta:
    """The typical time between an entity's rows (1 day when it cannot be told)."""
    steps = (frame.select(pl.col("timestamp").diff().over("entity").alias("d"))["d"]
             .drop_nulls())
    steps = steps.filter(steps > timedelta(0)) if len(steps) else steps
    return steps.median() if len(steps) else timedelta(days=1)  # type: ignore[return-value]


def evidence(frame: pl.DataFrame, labels: OperatorLabels) -> Evidence:
    """Count the validation split's events (runs of label 1 per entity) by whether an
    operator's label stands behind any of their rows, and its operator-labelled normal rows."""
    val = frame.filter(pl.col("split") == "validation")
    if OPERATOR not in val.columns:
        val = val.with_columns(pl.lit(0, pl.Int8).alias(OPERATOR))
    ids = event_ids(val["label"].to_numpy(), val["entity"].to_numpy())
    operator = val[OPERATOR].to_numpy().astype(bool)
    events = np.unique(ids[ids >= 0])
    labelled = np.unique(ids[(ids >= 0) & operator])
    normal = int((operator & (val["label"].to_numpy() == 0)).sum())
    return Evidence(int(len(events) - len(labelled)), int(len(labelled)), normal,
                    labels.to_json())
