"""Reference detectors on a tiny two-entity series: one row per baseline, the pick, the rank-mean."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.benchmark.baselines import (
    CHAPTER,
    PYOD_PICK,
    RANK_MEAN,
    BaselineSeries,
    ChapterSettings,
    chapter_input,
    run_baselines,
)

TINY_CHAPTER = ChapterSettings(window=8, stride=4, hidden=8, layers=1, latent=4, epochs=1)


def tiny_series(rows: int = 300) -> BaselineSeries:
    """Two entities of sine-like sensors in [0, 1]; anomalies (+0.8 on sensor 1) in validation
    and score rows of both."""
    rng = np.random.default_rng(0)
    t = np.arange(rows)
    x = 0.5 + 0.2 * np.stack([np.sin(t / 7), np.cos(t / 11), np.sin(t / 5)], axis=1)
    x += 0.02 * rng.standard_normal(x.shape)
    labels = np.zeros(rows, np.int8)
    for start in (170, 200, 260, 285):
        labels[start : start + 6] = 1
    x[labels == 1, 1] += 0.8
    split = np.array(["train"] * 150 + ["validation"] * 80 + ["score"] * 70)
    both = lambda a: np.concatenate([a, a])  # noqa: E731 - the second entity repeats the first
    return BaselineSeries(scaled=both((x - 0.5) / 0.2), shipped=both(x),
                          entity=np.repeat([0, 1], rows), split=both(split), labels=both(labels),
                          window=8)


def test_every_baseline_gets_a_row_then_the_pick_and_the_rank_mean() -> None:
    rows = run_baselines(tiny_series(), pyod=("KNN", "PCA", "IForest"), chapter=TINY_CHAPTER)
    names = [r["family"] for r in rows]
    assert names == ["pyod KNN", "pyod PCA", "pyod IForest", CHAPTER, PYOD_PICK, RANK_MEAN]
    for row in rows:
        assert row["note"] in ("", "4 baselines"), row
        for key in ("val_pr_auc", "pr_auc", "vus_pr", "roc_auc", "fpr"):
            assert np.isfinite(row[key]), (row["family"], key)
    by_name = {r["family"]: r for r in rows}
    assert by_name["pyod KNN"]["pr_auc"] > 0.5  # a +4 sigma jump on one sensor is easy
    pyod = [r for r in rows if r["family"].startswith("pyod ")]
    best = max(pyod, key=lambda r: r["val_pr_auc"])
    assert by_name[PYOD_PICK]["picked"] == best["family"].removeprefix("pyod ")
    assert by_name[PYOD_PICK]["pr_auc"] == best["pr_auc"]  # the pick reports its score split


def test_a_failing_detector_is_a_row_that_says_why() -> None:
    series = tiny_series()
    rows = run_baselines(series, pyod=("KNN",), chapter=ChapterSettings(window=500, epochs=1))
    chapter = next(r for r in rows if r["family"] == CHAPTER)
    assert chapter["note"].startswith("failed: no entity has 500 train rows")
    assert [r["family"] for r in rows] == ["pyod KNN", CHAPTER, PYOD_PICK]  # no rank-mean of one


def test_the_chapter_gets_rows_in_0_1() -> None:
    series = tiny_series()
    assert chapter_input(series) is series.shipped  # already in [0, 1]: as shipped
    wide = BaselineSeries(series.scaled, series.shipped * 100, series.entity, series.split,
                          series.labels, 8)
    scaled = chapter_input(wide)
    train = scaled[wide.mask("train")]
    assert train.min() == pytest.approx(0.0) and train.max() == pytest.approx(1.0)
