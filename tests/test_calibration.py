"""Threshold calibration with guarantees: conformal FPR, Youden's J, bootstrap interval, p-values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from schemas.config import ThresholdConfig
from tasks.evaluation.normalise import (
    MAX_REFERENCE,
    normaliser_json,
    p_values,
    p_values_from_threshold,
)
from tasks.evaluation.thresholds import (
    bootstrap_fpr_interval,
    calibrate,
    conformal_fpr_threshold,
    conformal_guarantee,
    rates,
    youden_threshold,
)

SEEDS = 200


def test_conformal_fpr_holds_on_fresh_normal_samples_over_many_seeds():
    """Distribution-free: exponential scores, n=200 calibration rows, alpha=0.1, 200 seeds."""
    alpha, n, fresh = 0.1, 200, 2000
    rng = np.random.default_rng(2026)
    calib = rng.exponential(size=(SEEDS, n))
    thresholds = np.array([conformal_fpr_threshold(row, alpha) for row in calib])
    achieved = (rng.exponential(size=(SEEDS, fresh)) > thresholds[:, None]).mean(axis=1)
    true_fpr = np.exp(-thresholds)  # exact conditional FPR of each threshold

    guarantee = conformal_guarantee(n, alpha)
    assert guarantee["expected_fpr_max"] <= alpha
    # marginal guarantee: the mean over seeds stays below alpha up to sampling noise (3 sigma)
    sigma = math.sqrt(alpha * (1 - alpha) / n + alpha * (1 - alpha) / fresh) / math.sqrt(SEEDS)
    assert achieved.mean() <= alpha + 3 * sigma
    assert abs(true_fpr.mean() - guarantee["expected_fpr_max"]) < 3 * sigma
    # per seed: violations of alpha + 0.03 happen no more often than Beta(n+1-k, k) allows
    k = guarantee["rank"]
    p_violate = stats.beta(n + 1 - k, k).sf(alpha + 0.03)
    observed = float((true_fpr > alpha + 0.03).mean())
    assert observed <= p_violate + 3 * math.sqrt(p_violate * (1 - p_violate) / SEEDS) + 1 / SEEDS
    # and the Beta 95% range reported for one slice covers ~95% of the seeds' true FPRs
    low, high = guarantee["conditional_fpr_95"]
    assert 0.90 <= float(((true_fpr >= low) & (true_fpr <= high)).mean()) <= 0.99


def test_conformal_needs_enough_rows_else_infinite():
    assert conformal_fpr_threshold(np.arange(5.0), 0.05) == math.inf
    assert conformal_guarantee(5, 0.05)["defined"] is False


def test_bootstrap_interval_covers_the_true_rate_and_is_seeded():
    alpha, n = 0.05, 400
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(100):
        normal = rng.exponential(size=n)
        t = conformal_fpr_threshold(normal, alpha)
        boot = bootstrap_fpr_interval(normal, t)
        assert boot["low"] <= boot["achieved"] <= boot["high"]
        covered += boot["low"] <= math.exp(-t) <= boot["high"]
    assert covered >= 85  # a 95% interval; 85/100 leaves room for noise, not for a broken one
    normal = rng.exponential(size=n)
    assert bootstrap_fpr_interval(normal, 2.0) == bootstrap_fpr_interval(normal, 2.0)
    assert bootstrap_fpr_interval(normal, 2.0)["resamples"] == 1000


def test_youden_picks_the_roc_optimal_cut():
    normal = np.array([0.1, 0.2, 0.3, 0.4, 0.45])
    anomalous = np.array([0.42, 0.5, 0.6, 0.7])
    scores = np.concatenate([normal, anomalous])
    labels = np.array([0] * 5 + [1] * 4)
    t = youden_threshold(scores, labels)
    r = rates(scores, labels, t)
    assert (r["recall"], r["fpr"]) == (1.0, pytest.approx(0.2))  # J = 0.8, not 0.75 at 0.5
    cuts = np.concatenate([[-1.0], np.sort(scores)])
    best_j = max(rates(scores, labels, c)["recall"] - rates(scores, labels, c)["fpr"] for c in cuts)
    assert r["recall"] - r["fpr"] == pytest.approx(best_j)
    assert math.isnan(youden_threshold(scores, np.zeros(9, dtype=int)))


def test_calibrate_reports_youden_bootstrap_guarantee_and_normaliser():
    rng = np.random.default_rng(0)
    train = rng.normal(size=500)
    val = np.concatenate([rng.normal(size=600), rng.normal(3.0, 1.0, size=60)])
    labels = np.array([0] * 600 + [1] * 60)
    out = calibrate(train, val, labels, ThresholdConfig(method="youden", target_fpr=0.05))
    assert out["method"] == "youden" and out["threshold"] == out["methods"]["youden"]["threshold"]
    target = out["methods"]["target_fpr"]
    assert target["fpr"] <= 0.05 and target["bootstrap_fpr"]["achieved"] == target["fpr"]
    assert target["guarantee"]["n"] == 600 and target["guarantee"]["expected_fpr_max"] <= 0.05
    ref = out["normaliser"]["reference"]
    assert len(ref) == 600 and ref == sorted(ref)


def test_p_values_uniform_on_normal_data_monotone_and_consistent_with_conformal():
    rng = np.random.default_rng(3)
    # marginally (over reference draws) P(p <= a) = floor(a (n+1)) / (n+1): average 50 references
    refs = np.sort(rng.gamma(2.0, size=(50, 399)), axis=1)
    p = np.stack([p_values(rng.gamma(2.0, size=2000), r) for r in refs])
    assert abs(p.mean() - 0.5) < 0.01  # sd of this mean ~0.002
    for level in (0.01, 0.05, 0.2):
        assert abs((p <= level).mean() - math.floor(level * 400) / 400) < 0.006
    ref = refs[0]
    fresh = rng.gamma(2.0, size=20000)
    grid = np.linspace(0, 15, 500)
    pg = p_values(grid, ref)
    assert np.all(np.diff(pg) <= 0) and pg[0] == 1.0 and pg[-1] == pytest.approx(1 / 400)
    t = conformal_fpr_threshold(ref, 0.05)
    assert np.all(p_values(fresh[fresh > t], ref) <= 0.05)
    assert np.isnan(p_values(np.array([np.nan, 1.0]), ref)[0])


def test_normaliser_reference_is_bounded_and_keeps_p_values():
    rng = np.random.default_rng(4)
    normal = rng.normal(size=100_000)
    norm = normaliser_json(normal)
    assert len(norm["reference"]) == MAX_REFERENCE and norm["n_normal"] == 100_000
    probe = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    exact = p_values(probe, np.sort(normal))
    approx = p_values_from_threshold(probe, {"normaliser": norm})
    assert np.allclose(approx, exact, atol=2.5e-3)
    assert np.isnan(p_values_from_threshold(probe, {})).all()  # versions without a normaliser
