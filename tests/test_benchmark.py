"""Benchmark runner: real pipeline on a tiny public table; SMD interpretation alignment."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from flows.benchmark import (
    CHAMPION,
    TABLE_COLUMNS,
    BenchmarkOptions,
    format_table,
    interpretation_truth,
    run_benchmark,
    with_means,
)
from tasks.benchmark.baselines import PYOD_PICK, PYOD_RUNNER, RANK_MEAN
from tasks.data.public_data import LoadReport
from tasks.evaluation.metrics import InterpretationSegment
from tests.shared_data import DATA, needs_data

BASELINE_ROWS = [f"pyod {d}" for d in PYOD_RUNNER] + [PYOD_PICK, RANK_MEAN]


@needs_data
def test_odds_cardio_through_the_real_pipeline(tmp_path, prefect_harness):
    """With --baselines: a row per PyOD detector, PyOD's validation pick and the rank-mean, on
    the runner's rows (a table: no chapter LSTM-AE row, it needs time order)."""
    table = run_benchmark("odds", DATA / "tabular", tmp_path,
                          BenchmarkOptions(families=("dense_ae",), epochs=2, baselines=True))
    assert set(TABLE_COLUMNS) | {"fpr", "picked", "version", "role"} <= set(table.columns)
    per_series = ["dense_ae", CHAMPION, *BASELINE_ROWS]
    assert table["family"].to_list() == per_series * 2
    assert table["series"].to_list() == ["cardio"] * len(per_series) + ["mean"] * len(per_series)
    baselines = table.filter(pl.col("family").str.starts_with("pyod ") & (pl.col("series") == "cardio"))
    assert (baselines["note"] == "").all() and (baselines["roc_auc"] > 0.7).all()
    pick = table.row(per_series.index(PYOD_PICK), named=True)
    assert pick["val_pr_auc"] == baselines["val_pr_auc"].max() and pick["picked"] in PYOD_RUNNER
    assert 0.0 < table.row(per_series.index(RANK_MEAN), named=True)["pr_auc"] <= 1.0
    first = table.row(0, named=True)
    for column in ("roc_auc", "pr_auc", "vus_pr", "best_f1", "pa_f1", "fit_s", "score_rows_per_s"):
        assert np.isfinite(first[column]), column
    assert first["roc_auc"] > 0.7  # cardio is easy; a broken pipeline scores ~0.5
    champion = table.row(1, named=True)
    assert champion["picked"] == "dense_ae"
    # what the choice rested on, and the nightly drift check over the score split
    assert champion["prior"] == "dense_ae" and champion["prior_source"] == "shipped:table"
    assert champion["events"] > 0 and champion["switched"] is False
    assert champion["drift"] in ("drift", "stable")
    assert champion["alerts"] >= champion["false_alerts"] >= 0
    assert (champion["drift"] == "drift") == bool(champion["drift_reasons"])
    assert 0.0 <= first["fpr"] <= 0.15  # target 0.05 on unseen normal rows

    text = format_table(table)
    assert text.splitlines()[0].startswith(
        "| dataset | series | family | val PR-AUC | ROC-AUC | PR-AUC | VUS-PR")
    assert "champion (dense_ae)" in text and f"{PYOD_PICK} ({pick['picked']})" in text

    version = tmp_path / "store" / "models" / "odds-cardio" / "dense_ae" / first["version"]
    manifest = json.loads((version / "MANIFEST.json").read_text())["files"]
    assert {"report.md", "plots/timeline.png", "plots/histogram.png", "plots/training.png"} <= set(manifest)
    metrics = json.loads((version / "metrics.json").read_text())["validation"]
    assert {"roc_auc", "pr_auc", "vus_pr", "best_f1", "pa_f1", "pa_k_auc", "event_recall"} <= set(metrics)
    threshold = json.loads((version / "threshold.json").read_text())
    assert "youden" in threshold["methods"] and threshold["normaliser"]["reference"]


def test_unknown_family_or_kind_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown families \\['nope'\\]"):
        run_benchmark("odds", tmp_path / "tabular", tmp_path, BenchmarkOptions(families=("nope",)))
    with pytest.raises(ValueError, match="unknown benchmark kind 'xyz'"):
        run_benchmark("xyz", tmp_path / "tabular", tmp_path)


def test_interpretation_truth_aligns_with_the_scored_tail():
    """Segment rows index the test file (offset = train rows); the scored frame is the tail."""
    segs = (InterpretationSegment(2, 4, frozenset({1})), InterpretationSegment(6, 7, frozenset({0, 2})))
    report = LoadReport("smd-x", (), {"train": 10, "validation": 5, "score": 5}, {},
                        interpretation=segs, interpretation_offset=10)
    frame = pl.DataFrame({"label": np.zeros(10)})  # validation + score rows: series rows 10..19
    truth = interpretation_truth(report, frame, 3)
    assert truth.shape == (10, 3)
    assert truth[2:4, 1].all() and truth[6, [0, 2]].all() and truth.sum() == 4
    assert interpretation_truth(LoadReport("x", (), {"train": 1}, {}), frame, 3) is None


def test_failed_family_is_reported_not_averaged_as_zero():
    rows = [
        {"dataset": "nab", "series": "a", "family": "tae", "picked": "", "note": "failed: latent too wide"},
        {"dataset": "nab", "series": "a", "family": "ae", "picked": "", "note": "", "version": "v1",
         "roc_auc": 0.8, "pr_auc": 0.4, "vus_pr": 0.5, "best_f1": 0.5, "pa_f1": 0.9, "fit_s": 1.0,
         "score_rows_per_s": 1e5, "fpr": 0.05},
        {"dataset": "nab", "series": "b", "family": "ae", "picked": "", "note": "", "version": "v2",
         "roc_auc": 0.6, "pr_auc": 0.2, "vus_pr": 0.3, "best_f1": 0.3, "pa_f1": 0.9, "fit_s": 3.0,
         "score_rows_per_s": 3e5, "fpr": 0.07},
    ]
    table = with_means(pl.DataFrame(rows, infer_schema_length=None))
    means = {r["family"]: r for r in table.filter(pl.col("series") == "mean").iter_rows(named=True)}
    assert means["ae"]["pr_auc"] == pytest.approx(0.3) and means["ae"]["note"] == "mean of 2 series"
    assert means["tae"]["pr_auc"] is None and means["tae"]["note"] == "mean of 0 series"
    text = format_table(table)
    assert "| nab | a | tae (failed) | n/a |" in text and "- a / tae: failed: latent too wide" in text


def test_the_table_reports_which_versions_export_and_the_export_rate():
    base = {"dataset": "nab", "picked": "", "note": "", "role": "family", "roc_auc": 0.8,
            "pr_auc": 0.4, "vus_pr": 0.5, "best_f1": 0.5, "pa_f1": 0.9, "fit_s": 1.0,
            "score_rows_per_s": 1e5}
    rows = [{**base, "series": "a", "family": "ae", "version": "v1", "exported": 1.0},
            {**base, "series": "b", "family": "ae", "version": "v2", "exported": 0.0},
            {**base, "series": "a", "family": "vae", "version": "v3", "exported": 1.0},
            {**base, "series": "a", "family": "ensemble", "version": "v4",
             "exported": float("nan")},  # no graph of its own: not counted
            {**base, "series": "a", "family": CHAMPION, "role": CHAMPION, "picked": "ae",
             "version": "v1", "exported": 1.0}]  # the same version again: not counted twice
    table = with_means(pl.DataFrame(rows, infer_schema_length=None))
    means = {r["family"]: r for r in table.filter(pl.col("series") == "mean").iter_rows(named=True)}
    assert means["ae"]["exported"] == pytest.approx(0.5) and means["vae"]["exported"] == 1.0
    text = format_table(table)
    assert "| ONNX exported |" in text.splitlines()[0]
    assert "ONNX export rate: 2 of 3 family versions (66.7%)" in text
