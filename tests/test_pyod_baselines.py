"""PyOD baseline harness: same rows as the runner, selection on validation only, honest oracle.

pyod itself is an optional extra (`bench`); these tests exercise everything around
the detectors with a small real detector (distance to the train mean), so they run
without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from benchmarks.pyod_baselines import (
    BEST_ON_VALIDATION,
    ORACLE,
    SplitRows,
    finite,
    format_table,
    run_detector,
    selections,
    split_rows,
    with_means,
)
from benchmarks.validation_sweep import variant
from tasks.evaluation import loaders

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class MeanDistance:
    """A real, tiny detector: squared distance to the train mean (PyOD's fit/decision_function)."""

    def fit(self, x: np.ndarray) -> MeanDistance:
        self.mean_ = x.mean(axis=0)
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean_) ** 2).sum(axis=1)


def test_split_rows_are_the_runners_rows_scaled_on_train_only(tmp_path):
    cfg, report = loaders.load_smd(DATA / "smd", "machine-2-1", tmp_path)
    rows = split_rows(cfg, cfg.window.length)
    assert rows.train.shape[0] == report.rows["train"]
    assert rows.val.shape[0] == report.rows["validation"]
    assert rows.score.shape[0] == report.rows["score"]
    assert int(rows.val_labels.sum()) == report.positives["validation"]
    assert int(rows.score_labels.sum()) == report.positives["score"]
    # machine-2-1 has 5 metrics that never move in train: dropped; the other 33 scaled like the
    # pipeline does (SMD's default is standard: train means at 0), with the loader's window
    assert (cfg.scaling.method, cfg.window.length) == ("standard", 32) and rows.window == 32
    assert rows.train.shape[1] == rows.score.shape[1] == 33
    np.testing.assert_allclose(rows.train.mean(axis=0), 0.0, atol=1e-4)


def test_run_detector_reports_validation_and_score_metrics():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 3))
    val, score = rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    val_labels, score_labels = np.zeros(300, dtype=np.int8), np.zeros(300, dtype=np.int8)
    val_labels[100:110] = score_labels[200:215] = 1
    val[100:110] += 6.0
    score[200:215] += 6.0
    out = run_detector(MeanDistance, SplitRows(train, val, val_labels, score, score_labels, 1))
    assert out["val_pr_auc"] > 0.99 and out["pr_auc"] > 0.99 and out["roc_auc"] > 0.99
    assert out["fpr"] < 0.15  # conformal threshold from validation normals, target 0.05
    assert {"vus_pr", "best_f1", "pa_f1", "fit_s", "score_rows_per_s"} <= set(out)


def test_selection_uses_validation_and_the_oracle_is_labelled():
    rows = [
        {"dataset": "d", "series": "s", "detector": "A", "note": "", "val_pr_auc": 0.9, "pr_auc": 0.2},
        {"dataset": "d", "series": "s", "detector": "B", "note": "", "val_pr_auc": 0.1, "pr_auc": 0.8},
        {"dataset": "d", "series": "s", "detector": "C", "note": "", "val_pr_auc": float("nan"),
         "pr_auc": 0.99},
        {"dataset": "d", "series": "s", "detector": "D", "note": "failed: boom"},
    ]
    picked, oracle = selections(rows)
    assert picked["detector"] == f"{BEST_ON_VALIDATION} (A)" and picked["pr_auc"] == 0.2
    assert oracle["detector"] == f"{ORACLE} (B)" and oracle["pr_auc"] == 0.8


def test_means_per_role_across_series():
    def row(series: str, detector: str, value: float) -> dict:
        return {"dataset": "nab", "series": series, "detector": detector, "note": "",
                "val_pr_auc": value, "pr_auc": value}

    table = pl.DataFrame([row("a", "X", 0.2), row("a", f"{BEST_ON_VALIDATION} (X)", 0.2),
                          row("b", "X", 0.6), row("b", f"{BEST_ON_VALIDATION} (Y)", 0.4),
                          row("c", "X", 0.5)])  # a third data set with one series gets no mean
    out = with_means(table.vstack(pl.DataFrame([{**row("t", "X", 0.9), "dataset": "odds"}])))
    mean_rows = out.filter(pl.col("series") == "mean").iter_rows(named=True)
    means = {r["detector"]: r["pr_auc"] for r in mean_rows}
    assert means == pytest.approx({"X": (0.2 + 0.6 + 0.5) / 3, BEST_ON_VALIDATION: (0.2 + 0.4) / 2})
    assert out.filter((pl.col("dataset") == "odds") & (pl.col("series") == "mean")).height == 0
    assert "| nab | mean | X |" in format_table(out)


def test_non_finite_scores_become_top_ties_not_errors():
    out = finite(np.array([1.0, np.inf, -np.inf, np.nan], dtype=np.float32))
    assert np.isfinite(out).all() and out.dtype == np.float64
    assert out[1] == out[3] == out.max() and out[2] == out.min() and out[0] == 1.0


def test_sweep_variant_changes_only_scaling_window_and_budget(tmp_path):
    cfg, _ = loaders.load_odds(DATA / "tabular", "cardio", tmp_path)
    out = variant(cfg, "robust", 8, ["pca"], epochs=3, max_train_windows=100)
    assert (out.scaling.method, out.window.length) == ("robust", 8)
    assert [f.name for f in out.families] == ["pca"] and out.training.epochs == 3
    assert out.name == "odds-cardio-robust-w8" and out.splits == cfg.splits
