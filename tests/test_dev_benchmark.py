"""The dev benchmark's arithmetic: selection regret, per data-set family means, the table."""

from __future__ import annotations

import pytest

from benchmarks.dev_benchmark import group_means, markdown, regret, selected


def series(kind: str, group: str, champion: str, scores: dict[str, float]) -> dict:
    rows = [{"family": f, "role": "family", "pr_auc": v, "vus_pr": v} for f, v in scores.items()]
    rows.append({"family": "champion", "role": "champion", "picked": champion,
                 "pr_auc": scores[champion], "vus_pr": scores[champion]})
    rows.append({"family": "pyod KNN", "role": "baseline", "pr_auc": 0.4, "vus_pr": 0.5})
    out = {"kind": kind, "group": group, "series": "s", "wall_s": 10.0, "rows": rows}
    return {**out, "regret": regret(out)}


def test_regret_is_best_family_in_hindsight_minus_champion_and_means_are_per_group() -> None:
    a = series("smd", "SMD+ASD", "pca", {"pca": 0.3, "knn": 0.5})
    b = series("asd", "SMD+ASD", "knn", {"pca": 0.2, "knn": 0.6})
    c = series("odds", "ODDS", "pca", {"pca": 0.9, "knn": 0.8, "usad": None})
    assert a["regret"] == {"regret": pytest.approx(0.2), "best_family": "knn", "champion": "pca"}
    assert b["regret"]["regret"] == 0.0 and c["regret"]["regret"] == 0.0  # a NaN family is no best
    groups = group_means([a, b, c])
    assert groups["SMD+ASD"]["champion"]["pr_auc"] == pytest.approx(0.45)
    assert groups["SMD+ASD"]["_regret"]["mean"] == pytest.approx(0.1)
    assert groups["ODDS"]["pyod KNN"]["n"] == 1 and groups["ODDS"]["usad"]["pr_auc"] is None
    text = markdown({"settings": {}, "series": [a, b, c], "groups": groups})
    assert "Champion minus the strongest baseline (pyod KNN), pr_auc: +0.050." in text
    # knn's mean over SMD+ASD (0.55) beats pca's (0.25): the best fixed candidate
    assert "Best fixed candidate (knn, the same for every series): 0.550 PR-AUC; champion " \
           "minus it: -0.100." in text
    assert "| smd:s | pca | n/a | n/a () | – | n/a | n/a | knn | 0.200 | 0.300 | n/a | n/a " \
           "(n/a) | 10 |" in text
    a["rows"][-2].update(events=4, prior="pca", prior_source="shipped:multivariate",
                         challenger="knn", margin=0.12, confidence=0.8, drift="drift",
                         alerts=900, false_alerts=880)
    text = markdown({"settings": {}, "series": [a], "groups": group_means([a])})
    assert ("| smd:s | pca | 4 | pca (multivariate) | knn | 0.120 | 0.800 | knn | 0.200 | "
            "0.300 | drift | 900 (880) | 10 |") in text


def test_series_filter_names_what_it_knows() -> None:
    assert selected("nab:nyc_taxi") == [("nab", "realKnownCause/nyc_taxi")]
    assert len(selected("")) == 11
    with pytest.raises(SystemExit, match="unknown dev series 'smd:nope'"):
        selected("smd:nope")
