"""The window -> row rules (mean_window, mean_elem, last_window, max_window): what each
computes, that torch and numpy (the ONNX path) agree to the bit, and that a version carries its
own rule (versions from before the field: "mean_elem")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.engine import WindowSet
from models.scoring import DEFAULT_ROW_RULE, ROW_RULES, row_contributions
from schemas.config import WindowConfig, parse_config
from tasks.data.window import window_starts
from tasks.scoring import numpy_row_contributions
from tasks.training.register import version_config
from tasks.versions import row_rule_of
from tests.tiny import tiny_config

L, F = 5, 3


def elements(windows: np.ndarray) -> np.ndarray:
    """Element scores that differ by window, step and feature: |x| * (step + 1)."""
    return (np.abs(windows) * np.arange(1, L + 1, dtype=np.float32)[None, :, None]).astype(
        np.float32)


def series(rows: int = 40) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, F)).astype(np.float32)


def expected_rows(x: np.ndarray, starts: np.ndarray, rule: str) -> np.ndarray:
    """The rules written out row by row, in float64."""
    e = elements(x[starts[:, None] + np.arange(L)]).astype(np.float64)  # (W, L, F)
    out = np.full(x.shape, np.nan)
    for row in range(len(x)):
        covering = [(w, s) for w, s in enumerate(starts) if s <= row < s + L]
        if rule == "last_window":
            covering = [(w, s) for w, s in covering if s + L - 1 == row]
        if not covering:
            continue
        if rule == "mean_elem":
            out[row] = np.mean([e[w, row - s] for w, s in covering], axis=0)
        elif rule == "max_window":
            out[row] = max((e[w].mean(axis=0) for w, _ in covering), key=lambda m: m.sum())
        else:
            out[row] = np.mean([e[w].mean(axis=0) for w, _ in covering], axis=0)
    return out


@pytest.mark.parametrize("rule", ROW_RULES)
def test_each_rule_computes_what_it_says_on_both_paths(rule: str) -> None:
    x = series()
    starts = window_starts(np.repeat([0, 1], [22, 18]), L, 1)  # two entities: gaps in cover
    want = expected_rows(x, starts, rule)
    got_numpy, _ = numpy_row_contributions(elements, x, starts, L, batch_size=7, rule=rule)
    got_torch, _ = row_contributions(lambda w: torch.from_numpy(elements(w.numpy())),
                                     WindowSet(torch.from_numpy(x), torch.from_numpy(starts), L),
                                     batch_size=7, rule=rule)
    np.testing.assert_allclose(got_numpy, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_torch.numpy(), got_numpy)


def test_the_rules_differ_only_with_windows_longer_than_a_row() -> None:
    x = series()
    starts = np.arange(len(x) - L + 1)
    by_rule = {r: numpy_row_contributions(elements, x, starts, L, rule=r)[0] for r in ROW_RULES}
    assert not np.allclose(by_rule["mean_elem"], by_rule["mean_window"])
    assert np.isnan(by_rule["last_window"][: L - 1]).all()  # no window ends there
    # max_window: a row's score is the largest total among its windows, never below the mean.
    assert (np.nansum(by_rule["max_window"], 1) >= np.nansum(by_rule["mean_window"], 1) - 1e-5).all()
    one = lambda w: np.abs(w)  # noqa: E731 - windows of one row
    rows = np.arange(len(x))
    same = [numpy_row_contributions(one, x, rows, 1, rule=r)[0] for r in ROW_RULES]
    for other in same[1:]:
        np.testing.assert_array_equal(same[0], other)


def test_an_unknown_rule_is_refused_on_both_paths() -> None:
    x = series()
    starts = np.arange(len(x) - L + 1)
    want = "unknown row rule 'last'; available: mean_window, mean_elem, last_window, max_window"
    with pytest.raises(ValueError, match=want):
        numpy_row_contributions(elements, x, starts, L, rule="last")
    with pytest.raises(ValueError, match=want):
        row_contributions(lambda w: w.abs(), WindowSet(torch.from_numpy(x),
                                                       torch.from_numpy(starts), L), rule="last")


def test_window_is_the_default_and_a_version_records_its_rule(tmp_path) -> None:
    assert WindowConfig().row_rule == DEFAULT_ROW_RULE == "mean_window"
    cfg = parse_config(tiny_config(tmp_path, window={"row_rule": "last_window"}))
    recorded = version_config(cfg, {"arguments": {}, "settings": {}})
    assert recorded["window"]["row_rule"] == "last_window" and row_rule_of(recorded) == "last_window"
    assert row_rule_of(version_config(parse_config(tiny_config(tmp_path)),
                                      {"arguments": {}, "settings": {}})) == "mean_window"
    # A version registered before the rule was recorded was scored by the element rule.
    assert row_rule_of({"window": {"length": 4, "stride": 1}}) == "mean_elem"
