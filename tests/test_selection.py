"""Injected anomalies and the few-labels champion choice (pure; milliseconds)."""

from __future__ import annotations

import numpy as np

from tasks.evaluation.ensemble import combine_rows, member_weights, robust_normaliser
from tasks.evaluation.injection import ANOMALY_KINDS, inject
from tasks.evaluation.selection import LabelledSlice, SelectionSettings, event_ids, select


def test_injection_marks_exactly_the_changed_rows_and_only_eligible_ones() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4))
    eligible = np.zeros(3000, dtype=bool)
    eligible[1000:2600] = True  # e.g. the normal validation rows; the rest must stay as they are
    out = inject(x, eligible, window=8, count=10, seed=5, max_share=0.3)
    assert {i.kind for i in out.injections} == set(ANOMALY_KINDS)
    changed = (out.x != x).any(axis=1)
    assert not changed[~eligible].any() and not out.labels[~eligible].any()
    assert changed[out.labels == 0].sum() == 0  # nothing changed outside the labels
    # every labelled segment changed (a stuck sensor keeps its first row, so check segments)
    for i, inj in enumerate(out.injections):
        rows = slice(inj.start, inj.start + inj.length)
        assert (out.events[rows] == i).all() and out.labels[rows].all()
        assert changed[rows].any()
    again = inject(x, eligible, window=8, count=10, seed=5, max_share=0.3)
    assert np.array_equal(again.x, out.x)  # deterministic with the seed


def _slice(labels: np.ndarray, scores: dict[str, np.ndarray]) -> LabelledSlice:
    return LabelledSlice("real", labels, event_ids(labels), scores)


def test_selection_falls_back_to_the_ensemble_when_candidates_do_not_separate() -> None:
    rng = np.random.default_rng(1)
    labels = np.zeros(600, dtype=np.int8)
    labels[100:110] = 1  # one labelled event: nothing can be told apart on it
    base = rng.normal(size=600)
    base[100:110] += 3
    scores = {"a": base + 0.05 * rng.normal(size=600), "b": base + 0.05 * rng.normal(size=600),
              "ensemble": base + 0.8 * rng.normal(size=600)}
    decision = select(_slice(labels, scores), None, SelectionSettings(bootstrap=100, seed=3))
    assert decision["chosen"] == "ensemble" and decision["fallback"] is True
    assert "too few" in decision["why"]
    assert set(decision["candidates"]) == {"a", "b", "ensemble"}
    # six events, candidates equal but for noise: the margin is inside the bootstrap's spread
    labels[:] = 0
    for s in range(50, 600, 90):
        labels[s:s + 4] = 1
    base = rng.normal(size=600) + 1.5 * labels
    scores = {n: base + 0.5 * rng.normal(size=600) for n in ("a", "b", "ensemble")}
    decision = select(_slice(labels, scores), None, SelectionSettings(bootstrap=200, seed=3))
    assert decision["top"] != "ensemble" and decision["chosen"] == "ensemble"
    assert decision["p_top_beats_fallback"] < 0.9 and "inside the noise" in decision["why"]


def test_selection_picks_a_candidate_that_clearly_wins() -> None:
    rng = np.random.default_rng(2)
    labels = np.zeros(2000, dtype=np.int8)
    for s in range(100, 1900, 150):
        labels[s:s + 5] = 1
    noise = rng.normal(size=2000)
    scores = {"good": noise + 6 * labels, "ensemble": rng.normal(size=2000) + 0.3 * labels}
    decision = select(_slice(labels, scores), None, SelectionSettings(bootstrap=100, seed=3))
    assert decision["chosen"] == "good" and decision["fallback"] is False
    assert decision["p_top_beats_fallback"] >= 0.9


def test_ensemble_contributions_add_up_to_the_score() -> None:
    rng = np.random.default_rng(3)
    members = [np.abs(rng.normal(size=(50, 3))) * k for k in (1.0, 40.0)]
    weights = member_weights([robust_normaliser(m.sum(axis=1))["scale"] for m in members])
    scores, contrib = combine_rows(members, weights)
    assert np.array_equal(scores, contrib.sum(axis=1, dtype=np.float64))
    assert np.allclose(scores, sum(w * m.sum(axis=1) for w, m in zip(weights, members, strict=True)),
                       rtol=1e-5)


def test_the_selection_stage_injects_on_normal_validation_rows_only() -> None:
    """Train rows, labelled rows and each entity's first and last window stay untouched, so
    no injected window reaches the score split or another entity."""
    import polars as pl

    from tasks.training.select import eligible_rows

    frame = pl.DataFrame({
        "entity": ["a"] * 60 + ["b"] * 60,
        "split": (["train"] * 20 + ["validation"] * 40) * 2,
        "label": ([0] * 30 + [1] * 5 + [0] * 25) * 2})
    ok = eligible_rows(frame, window=4)
    assert not ok[(frame["split"] == "train").to_numpy()].any()
    assert not ok[(frame["label"] == 1).to_numpy()].any()
    assert not ok[[0, 1, 2, 3, 56, 57, 58, 59, 60, 63, 116, 119]].any()
    assert ok[[20, 40, 55, 80, 115]].all()
