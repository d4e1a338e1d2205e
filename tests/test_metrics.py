"""Metrics against hand-computed cases, scikit-learn, and a row-by-row VUS reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from tasks.evaluation import metrics as m


@pytest.fixture
def case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = np.zeros(400, dtype=int)
    y[50:60] = 1
    y[200:230] = 1
    y[300] = 1
    s = rng.normal(size=y.size) + 1.5 * y
    return y, s


def test_ranking_metrics_match_sklearn(case):
    y, s = case
    assert m.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert m.pr_auc(y, s) == pytest.approx(average_precision_score(y, s))


def test_threshold_metrics_match_sklearn(case):
    y, s = case
    pred = s > 0.8
    p, r, f = m.precision_recall_f1(y, s, 0.8)
    assert p == pytest.approx(precision_score(y, pred))
    assert r == pytest.approx(recall_score(y, pred))
    assert f == pytest.approx(f1_score(y, pred))


def test_hand_computed_small_case():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.6, 0.7, 0.2, 0.3, 0.9])
    # pred (> 0.5): rows 1, 2, 5 -> tp 2, fp 1, fn 1
    assert m.precision_recall_f1(y, s, 0.5) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # by rank: top-1 F1 0.5, top-2 (rows 5, 2) F1 0.8, top-5 F1 0.75 -> best 0.8,
    # attained by any threshold in [0.6, 0.7); the midpoint is returned
    best, thr = m.best_f1(y, s)
    assert best == pytest.approx(0.8)
    assert thr == pytest.approx(0.65)
    assert m.precision_recall_f1(y, s, thr)[2] == pytest.approx(best)


def test_best_f1_threshold_reproduces_f1(case):
    y, s = case
    best, thr = m.best_f1(y, s)
    assert m.precision_recall_f1(y, s, thr)[2] == pytest.approx(best)
    grid = np.unique(s)
    assert best >= max(m.precision_recall_f1(y, s, t)[2] for t in grid[::7]) - 1e-12


def test_point_adjust_on_constructed_segment():
    y = np.array([0, 1, 1, 1, 1, 0, 0, 1, 1, 0])
    s = np.array(
        [0, 0, 1, 0, 0, 0, 1, 0, 0, 0], dtype=float
    )  # hits segment 1 once, one false alarm
    adjusted = m.point_adjust(y, s > 0.5)
    assert adjusted.tolist() == [0, 1, 1, 1, 1, 0, 1, 0, 0, 0]
    # adjusted: tp 4, fp 1, P 6 -> p 0.8, r 2/3
    assert m.pa_f1(y, s, 0.5) == pytest.approx(2 * 0.8 * (2 / 3) / (0.8 + 2 / 3))
    assert m.event_recall(y, s, 0.5) == pytest.approx(0.5)
    assert m.precision_recall_f1(y, s, 0.5)[2] == pytest.approx(2 * 0.5 * (1 / 6) / (0.5 + 1 / 6))


def test_pa_k_endpoints_and_middle(case):
    y, s = case
    curve = m.pa_k(y, s, 0.8)
    assert curve.k[0] == 0 and curve.k[-1] == 100 and curve.f1.size == 101
    assert curve.f1[0] == pytest.approx(m.pa_f1(y, s, 0.8))
    assert curve.f1[-1] == pytest.approx(m.precision_recall_f1(y, s, 0.8)[2])
    assert np.all(np.diff(curve.f1) <= 1e-12)  # fewer segments adjusted as K grows
    assert curve.f1[-1] - 1e-12 <= curve.auc <= curve.f1[0] + 1e-12
    # segment of 4 with 1 hit (25%): adjusted for K < 25, not for K >= 25
    y2 = np.array([1, 1, 1, 1, 0, 0])
    s2 = np.array([1.0, 0, 0, 0, 0, 1.0])
    c2 = m.pa_k(y2, s2, 0.5, ks=[0, 24, 25, 100])
    assert c2.f1.tolist() == pytest.approx(
        [2 * 0.8 * 1 / 1.8, 2 * 0.8 / 1.8, 2 * 0.5 * 0.25 / 0.75, 2 * 0.5 * 0.25 / 0.75]
    )


def _vus_reference(y: np.ndarray, s: np.ndarray, max_buffer: int, n_thr: int = 250) -> float:
    """Row-by-row VUS-PR written straight from the paper/TSB-AD description (slow, independent)."""
    n, P = y.size, int(y.sum())
    starts, ends = m.segments(y)
    desc = -np.sort(-s)
    aps = []
    for w in range(max_buffer + 1):
        h = w // 2
        soft = y.astype(float).copy()
        for a, e in zip(starts, ends - 1):
            for d in range(1, h + 1):
                if e + d < n:
                    soft[e + d] += math.sqrt(1 - d / w)
                if a - d >= 0:
                    soft[a - d] += math.sqrt(1 - d / w)
        soft = np.minimum(soft, 1.0)
        ranges: list[list[int]] = []
        for a, e in zip(starts, ends - 1):
            lo, hi = max(a - h, 0), min(e + h, n - 1)
            if ranges and not (ranges[-1][2] + h < a - h):
                ranges[-1][1] = hi
                ranges[-1][2] = e
            else:
                ranges.append([lo, hi, e])
        prev_r, ap = 0.0, 0.0
        for i in np.linspace(0, n - 1, n_thr).astype(int):
            pred = s >= desc[i]
            eff = np.where(y == 1, 1.0, soft * pred)
            tp = float((eff * pred).sum())
            p_new = (P + eff.sum()) / 2
            recall = min(tp / p_new, 1.0)
            exist = sum(bool(pred[lo : hi + 1].any()) for lo, hi, _ in ranges) / len(ranges)
            r = recall * exist
            ap += (r - prev_r) * tp / pred.sum()
            prev_r = r
        aps.append(ap)
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vus_pr_matches_row_by_row_reference(seed):
    rng = np.random.default_rng(seed)
    y = np.zeros(300, dtype=int)
    y[[0, 1, 2, 40, 41, 47, 48, 49, 150, 151, 152, 153, 297, 298, 299]] = 1  # edges, close segments
    s = np.round(rng.normal(size=y.size) + y * rng.uniform(0, 2), 1)  # ties on purpose
    assert m.vus_pr(y, s, max_buffer=20) == pytest.approx(_vus_reference(y, s, 20), abs=1e-12)


def test_vus_pr_perfect_is_one():
    y = np.zeros(1000, dtype=int)
    y[100:120] = 1
    y[600:640] = 1
    assert m.vus_pr(y, y.astype(float)) == pytest.approx(1.0)
    assert m.vus_pr(y, y * 5.0 + 1.0, max_buffer=30, n_thresholds=None) == pytest.approx(1.0)


def test_vus_pr_constant_score_matches_derivation():
    n, L = 2000, 100
    y = np.zeros(n, dtype=int)
    y[300:320] = 1
    y[900:905] = 1
    y[1500:1560] = 1  # K = 3 segments, buffers of <= 50 rows stay apart and inside
    expected = m.constant_score_vus_pr(n, int(y.sum()), 3, L)
    assert m.vus_pr(y, np.full(n, 0.3), max_buffer=L) == pytest.approx(expected, rel=1e-12)
    # and by hand for L = 4: B_2 = 2K*sqrt(1/2), B_3 = 2K*sqrt(2/3), B_4 = 2K*(sqrt(3/4)+sqrt(1/2))
    bsum = 6 * (math.sqrt(0.5) + math.sqrt(2 / 3) + math.sqrt(0.75) + math.sqrt(0.5))
    assert m.vus_pr(y, np.zeros(n), max_buffer=4) == pytest.approx((85 + bsum / 5) / n)


def test_hit_rate_constructed_case():
    labels = np.array([1, 1, 0, 1])
    contrib = np.array(
        [
            [0.9, 0.8, 0.1, 0.0],  # G {0,1}: top2 {0,1} -> 1
            [0.1, 0.9, 0.8, 0.0],  # G {0,1}: top2 {1,2} -> 0.5 ; top3 {1,2,0} -> 1
            [1.0, 1.0, 1.0, 1.0],  # label 0: ignored
            [0.0, 0.1, 0.2, 0.3],  # no G: ignored
        ]
    )
    truth = [frozenset({0, 1}), frozenset({0, 1}), frozenset({3}), frozenset()]
    assert m.hit_rate(labels, contrib, truth, p=100) == pytest.approx(0.75)
    assert m.hit_rate(labels, contrib, truth, p=150) == pytest.approx(1.0)
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, [0, 1]] = mask[1, [0, 1]] = True
    assert m.hit_rate(labels, contrib, mask, p=100) == pytest.approx(0.75)
    assert math.isnan(m.hit_rate(np.zeros(4, int), contrib, mask))


def test_interpretation_parser():
    lines = ["15-18:1,3\n", "\n", "17-20:2\n"]
    segs = m.parse_interpretation_labels(lines, n_rows=25, n_dims=4)
    assert segs[0] == m.InterpretationSegment(15, 18, frozenset({0, 2}))
    rows = m.interpretation_row_sets(segs, 25)
    assert (
        rows[14] == frozenset() and rows[15] == {0, 2} and rows[17] == {0, 1, 2} and rows[19] == {1}
    )
    assert rows[20] == frozenset()
    mask = m.interpretation_mask(segs, 25, 4)
    assert mask.sum() == 3 * 2 + 3 * 1 and mask[17].tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match=r"src: line 2"):
        m.parse_interpretation_labels(["1-2:1", "x-3:1"], source="src")
    with pytest.raises(ValueError, match=r"line 1: .*1\.\.4"):
        m.parse_interpretation_labels(["1-2:5"], n_dims=4)


@pytest.mark.parametrize("value", [0, 1])
def test_evaluate_degenerate_labels_give_nan_not_errors(value):
    y = np.full(50, value)
    s = np.linspace(0, 1, 50)
    out = m.evaluate(y, s, 0.5, window=4)
    assert tuple(out) == m.METRIC_KEYS
    assert math.isnan(out["roc_auc"])
    if value == 0:
        undefined = [
            "pr_auc",
            "recall",
            "f1",
            "best_f1",
            "pa_f1",
            "pa_k_auc",
            "event_recall",
            "vus_pr",
        ]
        assert all(math.isnan(out[k]) for k in undefined)
    else:
        assert out["vus_pr"] == pytest.approx(1.0) and out["precision"] == 1.0


def test_evaluate_keys_and_values(case):
    y, s = case
    out = m.evaluate(y, s, 0.8)
    assert tuple(out) == m.METRIC_KEYS and all(isinstance(v, float) for v in out.values())
    assert out["pa_f1"] >= out["f1"] and 0 <= out["vus_pr"] <= 1 and 0 <= out["pa_k_auc"] <= 1


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="differ in length"):
        m.roc_auc(np.array([0, 1]), np.array([0.1]))
    with pytest.raises(ValueError, match="0 and 1"):
        m.roc_auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="non-finite"):
        m.vus_pr(np.array([0, 1]), np.array([np.nan, 0.2]))
