"""Labels feed the pipeline: the data stage's relabelling, the evidence counts, the
false-alarm test and recalibration, missed incidents raising the drift event, and one
flow-level loop on the tiny synthetic config (train, label, recalibrate, retrain)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from scipy.stats import binomtest

from tasks.data.labelled import (
    OPERATOR,
    LabelledPeriod,
    OperatorLabels,
    apply_labels,
    evidence,
)
from tasks.feedback.adapt import FalseAlarmTest, recalibrated_threshold
from tests.labelled import ENTITY, ingested

T0 = datetime(2026, 1, 5)


def _frame(hours: int = 10) -> pl.DataFrame:
    """Hourly rows of two entities: the first 6 hours train, the rest none (outside)."""
    ts = [T0 + timedelta(hours=h) for h in range(hours)]
    return pl.DataFrame({
        "timestamp": ts * 2, "entity": ["a"] * hours + ["b"] * hours,
        "label": pl.Series([0] * (2 * hours), dtype=pl.Int8),
        "split": (["train"] * 6 + ["none"] * (hours - 6)) * 2})


def test_labels_relabel_rows_and_move_those_outside_train_to_validation() -> None:
    labels = OperatorLabels((
        LabelledPeriod("a", T0 + timedelta(hours=1), T0 + timedelta(hours=2), "anomaly"),
        LabelledPeriod("a", T0 + timedelta(hours=7), T0 + timedelta(hours=8), "normal"),
        LabelledPeriod("b", T0 + timedelta(hours=8), T0 + timedelta(hours=9), "anomaly"),
        LabelledPeriod("b", T0 + timedelta(hours=9), T0 + timedelta(hours=9), "normal"),
    ), table_version=4)
    out = apply_labels(_frame(), labels, T0, T0 + timedelta(hours=6))

    a, b = out.filter(pl.col("entity") == "a"), out.filter(pl.col("entity") == "b")
    assert a["label"].to_list() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert a["split"].to_list()[:6] == ["train"] * 6  # a train-range anomaly stays train: excluded
    assert a["split"].to_list()[6:] == ["none", "validation", "validation", "none"]
    assert b["label"].to_list()[8:] == [1, 1]  # the anomaly wins where the two overlap
    assert b["split"].to_list()[8:] == ["validation", "validation"]
    assert out[OPERATOR].sum() == 2 + 2 + 2
    assert out.schema["label"] == pl.Int8

    found = evidence(out, labels)
    assert (found.events_from_labels, found.normal_rows_from_labels) == (1, 2)
    assert found.labels == {"table_version": 4, "periods": 4, "anomaly": 2, "normal": 2}


def test_evidence_tells_configured_events_from_labelled_ones() -> None:
    frame = _frame().with_columns(
        split=pl.lit("validation"),
        label=pl.Series([0, 1, 1, 0, 0, 0, 0, 1, 0, 0] * 2, dtype=pl.Int8))
    labels = OperatorLabels((LabelledPeriod("b", T0 + timedelta(hours=4),
                                            T0 + timedelta(hours=4), "anomaly"),))
    found = evidence(apply_labels(frame, labels, T0, T0), labels)
    assert found.events_from_slices == 4  # two per entity from the ground truth
    assert found.events_from_labels == 1


@pytest.mark.parametrize(("alarms", "rows", "exceeds"), [(5, 40, True), (2, 40, False),
                                                         (3, 5, False)])
def test_the_false_alarm_test_is_a_one_sided_binomial_at_the_stated_confidence(
        alarms: int, rows: int, exceeds: bool) -> None:
    p = binomtest(alarms, rows, 0.05, alternative="greater").pvalue
    test = FalseAlarmTest(ENTITY, [], rows, alarms, 0.05, p, 0.95, 10, 1.0, 2.0)
    assert test.exceeds is exceeds  # 3 of 5 breaks the rate, but 5 rows are too few to say
    assert test.to_json()["statement"].startswith(f"P(X >= {alarms} | n={rows}, p=0.05)")


def test_recalibration_raises_only_the_tested_entity_and_keeps_the_pooled_threshold() -> None:
    threshold = {"threshold": 1.0, "method": "percentile", "normaliser": {"reference": [0.1]},
                 "per_entity": {"other": {"threshold": 3.0, "method": "percentile"}}}
    moved = FalseAlarmTest(ENTITY, ["2026-01-09"], 40, 6, 0.05, 0.001, 0.95, 10, 1.0, 1.7)
    out = recalibrated_threshold(threshold, [moved], "now")
    assert out["threshold"] == 1.0 and out["per_entity"]["other"]["threshold"] == 3.0
    mine = out["per_entity"][ENTITY]
    assert mine["threshold"] == 1.7 and mine["recalibrated"]["from"] == 1.0
    assert mine["normaliser"] == {"reference": [0.1]}  # p-values keep their reference


def test_the_data_stage_applies_labels_and_counts_the_evidence(tmp_path) -> None:
    """Train-range anomalies leave training; labelled rows after the range become validation."""
    from tasks.data.prepare import scale_dataset, window_dataset
    from tasks.training.train import training_starts

    cfg, _ = ingested(tmp_path)
    plain = scale_dataset.fn(cfg)
    labels = OperatorLabels((
        LabelledPeriod(ENTITY, datetime(2026, 1, 6, 1), datetime(2026, 1, 6, 3), "anomaly"),
        LabelledPeriod(ENTITY, datetime(2026, 1, 10, 2), datetime(2026, 1, 10, 4), "normal"),
        LabelledPeriod(ENTITY, datetime(2026, 1, 10, 10), datetime(2026, 1, 10, 11), "anomaly"),
        LabelledPeriod("machine-99", datetime(2026, 1, 10, 10), datetime(2026, 1, 10, 11),
                       "anomaly"),  # not this scope's entity: no effect
    ), table_version=2)
    scaled = scale_dataset.fn(cfg, labels)
    prepared = window_dataset.fn(cfg, scaled)

    rows = pl.from_arrow(tasks_store(cfg).read_parquet(scaled.scaled_key))
    after_range = rows.filter(pl.col("timestamp") >= datetime(2026, 1, 10))
    assert after_range.filter(pl.col("split") == "validation").height == 5 + 3
    assert after_range.filter((pl.col("split") == "validation") & (pl.col("label") == 1)).height == 3
    in_train = rows.filter((pl.col("timestamp") >= datetime(2026, 1, 6, 1))
                           & (pl.col("timestamp") <= datetime(2026, 1, 6, 3)))
    assert in_train["split"].to_list() == ["train"] * 5 and in_train["label"].sum() == 5
    assert plain.evidence is not None and scaled.evidence is not None
    assert scaled.evidence["events_from_labels"] == 1
    assert scaled.evidence["normal_rows_from_labels"] == 5
    assert scaled.evidence["events_from_slices"] == plain.evidence["events_from_slices"]
    assert scaled.evidence["labels"]["table_version"] == 2
    assert prepared.evidence == scaled.evidence and scaled.scaled_key != plain.scaled_key

    index = pl.from_arrow(tasks_store(cfg).read_parquet(prepared.windows_key))
    starts = training_starts(index, cfg.splits.train_on_normal_only).numpy()
    labelled = np.flatnonzero(((rows["timestamp"] >= datetime(2026, 1, 6, 1))
                               & (rows["timestamp"] <= datetime(2026, 1, 6, 3))).to_numpy())
    covered = {int(s) + k for s in starts for k in range(cfg.window.length)}
    assert cfg.splits.train_on_normal_only and not covered & set(labelled.tolist())


def tasks_store(cfg):
    from tasks.common import store_for

    return store_for(cfg)
