"""Drift statistics on constructed shifts, and none on same-distribution data."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from schemas.config import DriftConfig
from tasks.evaluation.drift_statistics import (
    data_reference,
    drift_report,
    feature_reference,
    ks_against_quantiles,
    psi,
    score_reference,
)

RNG = np.random.default_rng(0)
TRAIN = pl.DataFrame({"a": RNG.normal(0, 1, 5000), "b": RNG.normal(0, 1, 5000)})
TRAIN_SCORES = RNG.gamma(2.0, 1.0, 5000)
REF = {**data_reference(TRAIN, ["a", "b"], bins=10), "scores": score_reference(TRAIN_SCORES)}


def test_ks_matches_scipy_on_a_shift():
    from scipy import stats

    ref = RNG.normal(0, 1, 20000)
    new = RNG.normal(0.5, 1, 2000)
    ours = ks_against_quantiles(feature_reference(ref, 10)["quantiles"], new)
    assert ours == pytest.approx(stats.ks_2samp(ref, new).statistic, abs=0.02)
    assert ours > 0.15


def test_psi_is_zero_for_equal_and_large_for_moved_mass():
    assert psi(np.full(10, 0.1), np.full(10, 0.1)) == pytest.approx(0.0)
    moved = np.array([0.5] + [0.5 / 9] * 9)
    assert psi(np.full(10, 0.1), moved) > 0.25


def test_same_distribution_is_not_drift():
    night = pl.DataFrame({"a": RNG.normal(0, 1, 288), "b": RNG.normal(0, 1, 288)})
    report = drift_report(REF, night, ["a", "b"], DriftConfig(), RNG.gamma(2.0, 1.0, 288),
                          np.zeros(288, dtype=bool))
    assert not report["drift"], report["reasons"]
    assert report["features"]["a"]["ks"] < 0.1 and report["features"]["a"]["psi"] < 0.1


def test_shifted_feature_is_named_and_scores_and_rate_are_judged():
    night = pl.DataFrame({"a": RNG.normal(0, 1, 288), "b": RNG.normal(1.5, 1, 288)})
    report = drift_report(REF, night, ["a", "b"], DriftConfig(), RNG.gamma(2.0, 1.0, 288) * 3,
                          np.r_[np.ones(100, bool), np.zeros(188, bool)])
    assert report["drift"]
    assert report["drifted_features"] == ["b"]
    assert report["features"]["b"]["psi"] > 0.25
    assert report["score_ks"] > 0.3
    assert report["anomaly_rate"] == pytest.approx(100 / 288)
    assert len(report["reasons"]) == 3


def test_variance_change_is_caught_by_psi():
    night = pl.DataFrame({"a": RNG.normal(0, 3, 500), "b": RNG.normal(0, 1, 500)})
    report = drift_report(REF, night, ["a", "b"], DriftConfig(), None, None)
    assert report["drifted_features"] == ["a"]
