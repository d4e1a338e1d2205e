"""Classical baselines (pca, iforest): closed-form fit on the engine, sklearn parity, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from models.classical import IsolationForestModel
from models.engine import EngineSettings, WindowSet, fit
from models.registry import build_model
from models.scoring import row_contributions
from tasks.scoring import OnnxScorer
from tasks.training.export import export_onnx
from tasks.versions import model_from_bytes, weights_bytes
from tests.signals import every_window, sine_series

F, L = 4, 8


def _series(t: int = 600, seed: int = 0) -> torch.Tensor:
    return sine_series(t, F, seed)


def _windows(series: torch.Tensor) -> WindowSet:
    return every_window(series, L)


def _flat(ws: WindowSet) -> np.ndarray:
    return ws.batch(torch.arange(len(ws))).reshape(len(ws), -1).numpy()


def _probe(n: int = 200) -> torch.Tensor:
    x = _windows(_series(300, seed=1)).batch(torch.arange(n)).clone()
    x[::10, :, 1] += 3.0  # every tenth window: sensor 1 shifted by 3 (about 4 sd)
    return x


def _fitted(name: str, params: dict | None = None):
    model = build_model(name, F, L, params or {})
    result = fit(model, _windows(_series()), EngineSettings(epochs=3, batch_size=64, seed=0))
    return model, result


@pytest.mark.parametrize("name", ["pca", "iforest"])
def test_engine_fits_in_closed_form(name):
    model, result = _fitted(name)
    assert result.epochs_run == 0 and len(result.history) == 1
    assert np.isfinite(result.best_holdout) and result.train_windows > 0
    x = _probe()
    with torch.no_grad():
        scores = model.element_scores(x)
    assert scores.shape == x.shape and torch.isfinite(scores).all() and (scores >= 0).all()
    window = scores.sum(dim=(1, 2))
    assert window[::10].min() > window[1::10].max()  # every shifted window outranks the rest


@pytest.mark.parametrize("name", ["pca", "iforest"])
def test_unfitted_model_says_so(name):
    with pytest.raises(RuntimeError, match="not fitted"):
        build_model(name, F, L, {}).element_scores(_probe(4))


def test_pca_equals_sklearn_reconstruction_error():
    train = _windows(_series())
    model = build_model("pca", F, L, {"n_components": 3})
    model.fit_direct(train)
    reference = PCA(n_components=3).fit(_flat(train))
    x = _probe().reshape(200, -1).numpy().astype(np.float64)
    expected = ((x - reference.inverse_transform(reference.transform(x))) ** 2).sum(axis=1)
    with torch.no_grad():
        elements = model.element_scores(_probe())
    np.testing.assert_allclose(elements.sum(dim=(1, 2)).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_pca_variance_fraction_keeps_as_many_components_as_sklearn():
    train = _windows(_series())
    model = build_model("pca", F, L, {"variance": 0.9})
    model.fit_direct(train)
    assert model.components.shape[0] == PCA(n_components=0.9).fit(_flat(train)).n_components_


def test_iforest_matches_sklearn_score_samples():
    train = _windows(_series())
    model = build_model("iforest", F, L, {"n_estimators": 50, "max_features": 0.7})
    forest = model.sklearn_forest().fit(_flat(train))
    model.adopt(forest)
    x = _probe()
    with torch.no_grad():
        ours = model.element_scores(x).sum(dim=(1, 2)).double().numpy()
    expected = -forest.score_samples(x.reshape(len(x), -1).numpy())
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_iforest_attribution_points_at_the_isolating_feature():
    model, _ = _fitted("iforest")
    with torch.no_grad():
        elements = model.element_scores(_probe()[::10])  # the shifted windows
    per_feature = elements.sum(dim=1)  # (B, F)
    assert (per_feature.argmax(dim=1) == 1).all()


def test_iforest_share_is_even_without_splits():
    model: IsolationForestModel = build_model("iforest", F, L, {})
    model.fit_direct(_windows(torch.ones(40, F)))  # constant data: single-node trees
    with torch.no_grad():
        elements = model.element_scores(_probe(5))
    assert torch.allclose(elements, elements[:, :1, :1].expand_as(elements))


@pytest.mark.parametrize("name", ["pca", "iforest"])
def test_row_contributions_sum_to_window_scores(name):
    model, _ = _fitted(name)
    series = _series(160, seed=3)
    tiles = WindowSet(series, torch.arange(0, 160 - L + 1, L), L)  # each row covered once
    contrib, _ = row_contributions(model, tiles)
    with torch.no_grad():
        window = model.element_scores(tiles.batch(torch.arange(len(tiles)))).sum(dim=(1, 2))
    per_window = contrib[: len(tiles) * L].sum(dim=1).reshape(len(tiles), L).sum(dim=1)
    torch.testing.assert_close(per_window, window, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["pca", "iforest"])
def test_save_load_and_onnx_give_the_same_scores(name):
    model, _ = _fitted(name)
    loaded = model_from_bytes(model.arguments(), weights_bytes(model), torch.device("cpu"))
    x = _probe()
    with torch.no_grad():
        expected = model.element_scores(x)
        assert torch.equal(loaded.element_scores(x), expected)
    onnx = OnnxScorer(export_onnx(loaded))
    assert float((onnx.element_scores(x) - expected).abs().max()) < 1e-5
