"""Injected anomalies and the few-labels champion choice (pure; milliseconds)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.combiners import combine_rows, member_weights, robust_normaliser
from tasks.evaluation.injection import ANOMALY_KINDS, inject
from tasks.evaluation.selection import (
    LabelledSlice,
    Prior,
    SelectionSettings,
    challenge,
    event_ids,
    pooled_prior,
    select,
    validation_slice,
)


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

    from tasks.training.selection_evidence import eligible_rows

    frame = pl.DataFrame({
        "entity": ["a"] * 60 + ["b"] * 60,
        "split": (["train"] * 20 + ["validation"] * 40) * 2,
        "label": ([0] * 30 + [1] * 5 + [0] * 25) * 2})
    ok = eligible_rows(frame, window=4)
    assert not ok[(frame["split"] == "train").to_numpy()].any()
    assert not ok[(frame["label"] == 1).to_numpy()].any()
    assert not ok[[0, 1, 2, 3, 56, 57, 58, 59, 60, 63, 116, 119]].any()
    assert ok[[20, 40, 55, 80, 115]].all()


# --- the prior rule -------------------------------------------------------------------------

def _events(n_rows: int, starts: range, length: int = 4) -> np.ndarray:
    labels = np.zeros(n_rows, dtype=np.int8)
    for s in starts:
        labels[s:s + length] = 1
    return labels


PRIOR = Prior(("pca", "knn"), "shipped:servers", {"commit": "test"})


def _tie(seed: int, names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Seven events; candidates equal but for their own noise."""
    rng = np.random.default_rng(seed)
    labels = _events(600, range(50, 600, 90))
    base = rng.normal(size=600) + 1.5 * labels
    return labels, {n: base + 0.5 * rng.normal(size=600) for n in names}


def test_the_prior_is_kept_on_a_tie_within_noise_and_the_record_says_why() -> None:
    names = ("pca", "knn", "usad", "vae", "lstm_ae")
    settings = SelectionSettings(bootstrap=500, normal_block=25)
    decisions = [challenge([_slice(*_tie(seed, names))], PRIOR, settings) for seed in range(20)]
    switched = [d for d in decisions if d["switched"]]
    assert len(switched) <= 3  # about the 10% a 0.9 confidence allows, not a coin toss
    kept = [d for d in decisions if d["challenger"] != "pca" and not d["switched"]]
    assert kept and all("inside the noise" in d["why"] for d in kept)
    decision = kept[0]
    assert decision["chosen"] == "pca" and decision["margin"] > 0
    assert decision["confidence"] < decision["required_confidence"] == 1 - 0.1 / 4
    assert decision["events"] == 7 and decision["prior"] == "pca"
    assert decision["prior_source"] == "shipped:servers"
    assert decision["prior_provenance"] == {"commit": "test"}
    assert set(decision["candidates"]) == set(names)


def test_a_challenger_with_a_clear_margin_replaces_the_prior() -> None:
    rng = np.random.default_rng(5)
    labels = _events(2000, range(100, 1900, 150))  # twelve events
    scores = {"pca": rng.normal(size=2000) + 0.3 * labels,
              "knn": rng.normal(size=2000) + 6 * labels}
    decision = challenge([_slice(labels, scores)], PRIOR, SelectionSettings(bootstrap=200))
    assert decision["chosen"] == "knn" and decision["switched"] is True
    assert decision["challenger"] == "knn" and decision["confidence"] >= 0.9
    assert decision["margin"] > 0.5 and decision["events"] == 12
    # the same margin on two events is too little evidence to overrule the prior
    few = _events(2000, range(100, 400, 150))
    decision = challenge([_slice(few, {"pca": scores["pca"], "knn": scores["knn"] * 0 + 6 * few})],
                         PRIOR, SelectionSettings(bootstrap=200, min_events=3))
    assert decision["chosen"] == "pca" and "too few" in decision["why"]


def test_no_score_split_row_reaches_the_choice() -> None:
    rng = np.random.default_rng(6)
    n = 3000
    labels = _events(n, range(100, n, 200))
    splits = np.where(np.arange(n) < 1500, "validation", "score")
    groups = np.zeros(n, dtype=np.int64)
    scores = {"pca": rng.normal(size=n) + 0.2 * labels, "knn": rng.normal(size=n) + 0.2 * labels}
    before = challenge([validation_slice(splits, labels, groups, scores)], PRIOR)
    # knn becomes perfect on the score split, and its labels change there: no choice moves
    leak = {"pca": scores["pca"], "knn": np.where(splits == "score", 50.0 * labels, scores["knn"])}
    relabelled = np.where(splits == "score", 1 - labels, labels)
    after = challenge([validation_slice(splits, relabelled, groups, leak)], PRIOR)
    assert before == after
    assert before["events"] == len(range(100, 1500, 200))


def test_the_fleet_prior_pools_events_no_single_scope_could_use() -> None:
    rng = np.random.default_rng(7)
    slices = []
    for _ in range(4):  # four scopes with two events each: alone, too few to overrule
        labels = _events(800, range(200, 700, 300))
        slices.append(_slice(labels, {"pca": rng.normal(size=800) + 0.2 * labels,
                                      "knn": rng.normal(size=800) + 5 * labels}))
    settings = SelectionSettings(bootstrap=200, min_events=3)
    assert all(challenge([s], PRIOR, settings)["chosen"] == "pca" for s in slices)
    fleet = pooled_prior(slices, PRIOR, settings)
    assert fleet.ranking[0] == "knn" and fleet.source == "fleet"
    assert fleet.provenance["events"] == 8 and fleet.provenance["from"] == "shipped:servers"
    assert all(challenge([s], fleet, settings)["chosen"] == "knn" for s in slices)


def test_the_shipped_prior_is_the_benchmark_corpus_validation_ranking_with_provenance() -> None:
    import json

    from benchmarks.selection_priors import RESULTS, priors
    from tasks.evaluation.priors import configured_prior, infer_kind, shipped_prior, shipped_priors

    # the data file is exactly what the script derives from the committed results
    assert shipped_priors() == json.loads(json.dumps(priors(json.loads(RESULTS.read_text()),
                                                            RESULTS)))
    assert {infer_kind(38, 16), infer_kind(1, 32), infer_kind(21, 1)} == {
        "multivariate", "univariate", "table"}
    prior = shipped_prior("multivariate")
    assert prior.source == "shipped:multivariate" and len(prior.ranking) == 10
    assert prior.provenance["commit"] and "validation PR-AUC" in prior.provenance["rule"]
    assert "asd:omi-1" in prior.provenance["series"]
    means = shipped_priors()["kinds"]["multivariate"]["val_pr_auc"]
    assert list(means.values()) == sorted(means.values(), reverse=True)
    assert prior.pick(["usad", "knn"]) == min(["usad", "knn"], key=prior.ranking.index)
    override = configured_prior("table", "usad")
    assert override.ranking[0] == "usad" and override.source == "config"
    with pytest.raises(ValueError, match="available: multivariate, table, univariate"):
        shipped_prior("images")  # type: ignore[arg-type]


def test_the_cauchy_ensemble_keeps_a_catch_only_one_member_makes() -> None:
    """Five members; one row that only member 0 finds far out, and busy normal rows where
    every member is mildly high. The robust-z mean ranks the lone catch below the busy rows
    (its alarm is divided by five); the Cauchy combination ranks it first."""
    from tasks.evaluation.combiners import cauchy_rows, cauchy_scores, tail_reference

    rng = np.random.default_rng(8)
    m, f = 5, 3
    train = [np.abs(rng.normal(size=(4000, f))) * (k + 1) for k in range(m)]  # (rows, F)
    rows = [np.abs(rng.normal(size=(300, f))) * (k + 1) for k in range(m)]
    train_totals = [t.sum(axis=1) for t in train]
    for k in range(m):  # busy but normal: every member at its 97th percentile of normal rows
        rows[k][:20] = np.quantile(train_totals[k], 0.97) / f
    lone = 150
    rows[0][lone] = [0.1, 9.0, 0.1]  # only member 0 sees it, through feature 1
    weights = member_weights([robust_normaliser(t)["scale"] for t in train_totals])
    z_scores, _ = combine_rows(rows, weights)
    assert (z_scores > z_scores[lone]).sum() >= 5  # diluted: busy rows outrank the catch

    references = [tail_reference(t) for t in train_totals]
    scores, contrib = cauchy_rows(rows, references)
    assert np.argmax(scores) == lone and np.expm1(scores[lone]) > 10 * np.expm1(np.sort(scores)[-2])
    assert np.array_equal(scores, contrib.sum(axis=1, dtype=np.float64))  # adds up
    assert np.argmax(contrib[lone]) == 1  # the explanation points at member 0's feature
    np.testing.assert_allclose(scores, cauchy_scores([r.sum(axis=1) for r in rows], references),
                               rtol=1e-5)
    assert (scores >= 0).all()


def test_tail_p_values_stay_ordered_beyond_the_normal_reference() -> None:
    from tasks.evaluation.combiners import tail_log_pvalues, tail_pvalues, tail_reference

    rng = np.random.default_rng(9)
    reference = tail_reference(rng.exponential(size=5000))
    s = np.array([0.0, 0.5, 2.0, 6.0, 9.0, 30.0, 900.0, 5000.0, np.nan])
    log_p = tail_log_pvalues(s, reference)
    assert log_p[0] == 0.0 and np.isnan(log_p[-1])
    assert (np.diff(log_p[:-1]) < 0).all()  # far beyond every train row, still ordered
    assert tail_pvalues(s[:1], reference)[0] == 1.0
    assert abs(tail_pvalues(np.array([np.log(100)]), reference)[0] - 0.01) < 0.004


def test_members_are_chosen_for_diversity() -> None:
    from tasks.evaluation.combiners import diverse_members, rank_correlation

    rng = np.random.default_rng(10)
    base = rng.normal(size=2000)
    twin = base * 3 + 0.01 * rng.normal(size=2000)  # another scale, the same ranking
    other = rng.normal(size=2000)
    assert rank_correlation(base, twin) > 0.99 and abs(rank_correlation(base, other)) < 0.1
    assert diverse_members([base, twin, other], 0.9) == [0, 2]  # the twin adds nothing
    assert diverse_members([base, twin], 0.9) == [0, 1]  # but an ensemble keeps two
    assert diverse_members([base, twin, other], 1.0) == [0, 1, 2]
