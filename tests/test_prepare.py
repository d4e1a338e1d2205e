"""Scaling and windowing: fitted on train only, windows are views, index is exact."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from models.engine import WindowSet
from tasks.data.scale import ScalerParams, apply_scaler, fit_scaler
from tasks.data.window import build_window_index, window_starts


def frame() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    return pl.DataFrame({"a": rng.normal(5, 2, 200), "b": rng.uniform(-1, 3, 200),
                         "flat": np.full(200, 7.0)})


@pytest.mark.parametrize("method", ["standard", "robust", "minmax"])
def test_scalers_match_their_definition_and_roundtrip_json(method: str) -> None:
    f = frame()
    params = fit_scaler(f, ["a", "b", "flat"], method)
    scaled = apply_scaler(f, params)
    a = f["a"].to_numpy()
    expected = {
        "standard": (a - a.mean()) / a.std(ddof=1),
        "robust": (a - np.median(a)) / (np.quantile(a, 0.75) - np.quantile(a, 0.25)),
        "minmax": (a - a.min()) / (a.max() - a.min()),
    }[method]
    np.testing.assert_allclose(scaled["a"].to_numpy(), expected, rtol=1e-5, atol=1e-5)
    assert params.scale[2] == 1.0  # a constant feature is shifted, never divided by zero
    assert scaled["a"].dtype == pl.Float32
    assert ScalerParams.from_json(params.to_json()) == params


def test_scaler_on_empty_train_split_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="train split is empty"):
        fit_scaler(frame().head(0), ["a"], "standard")


def test_window_starts_respect_entities_and_stride() -> None:
    entities = np.array([0] * 6 + [1] * 5 + [2] * 2)
    assert window_starts(entities, 3, 1).tolist() == [0, 1, 2, 3, 6, 7, 8]
    assert window_starts(entities, 3, 2).tolist() == [0, 2, 6, 8]
    assert window_starts(entities, 20, 1).tolist() == []


def test_window_index_labels_and_splits() -> None:
    f = pl.DataFrame({
        "entity": ["a"] * 5 + ["b"] * 4,
        "timestamp": list(range(9)),
        "label": [0, 0, 1, 0, 0, 0, 0, 0, 1],
        "split": ["train"] * 3 + ["validation"] * 6,
    })
    idx = build_window_index(f, 3, 1)
    assert idx["start_row"].to_list() == [0, 1, 2, 5, 6]
    assert idx["label"].to_list() == [1, 1, 1, 0, 1]
    assert idx["split"].to_list() == ["train", "mixed", "mixed", "validation", "validation"]
    assert idx["end_ts"].to_list() == [2, 3, 4, 7, 8]


def test_windows_are_views_of_the_series_not_copies() -> None:
    series = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    ws = WindowSet(series, torch.tensor([0, 5, 17]), 3)
    assert ws._view.untyped_storage().data_ptr() == series.untyped_storage().data_ptr()
    batch = ws.batch(torch.tensor([1, 2]))
    assert batch.shape == (2, 3, 2)
    assert torch.equal(batch[0], series[5:8]) and torch.equal(batch[1], series[17:20])
    with pytest.raises(ValueError, match="past the end"):
        WindowSet(series, torch.tensor([18]), 3)
