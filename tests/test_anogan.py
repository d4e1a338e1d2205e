"""AnoGAN family: GAN + encoder training on the shared engine, both scoring modes, export."""

from __future__ import annotations

import pytest
import torch

from models.anogan import AnoGAN
from models.engine import EngineSettings, WindowSet, fit
from models.registry import build_model
from models.scoring import row_contributions
from tasks.scoring import OnnxScorer
from tasks.training.export import export_onnx
from tasks.versions import model_from_bytes, weights_bytes
from tests.signals import every_window, sine_series

F, L = 4, 8
SMALL = {"latent": 8, "hidden": [32, 64]}


def _series(t: int = 500, seed: int = 0) -> torch.Tensor:
    return sine_series(t, F, seed)


def _windows(series: torch.Tensor) -> WindowSet:
    return every_window(series, L)


def _settings(epochs: int) -> EngineSettings:
    return EngineSettings(epochs=epochs, batch_size=64, lr=2e-3, patience=50, seed=0)


@pytest.fixture(scope="module")
def trained() -> AnoGAN:
    torch.set_num_threads(2)
    model = build_model("anogan", F, L, SMALL)
    model.fit_result = fit(model, _windows(_series()), _settings(8))
    return model


def _probe(n: int = 64) -> torch.Tensor:
    return _windows(_series(200, seed=1)).batch(torch.arange(n))


def _with_params(model: AnoGAN, **changes) -> AnoGAN:
    """The same weights under other scoring params (mode, search settings)."""
    args = model.arguments()
    return model_from_bytes({**args, "params": {**args["params"], **changes}},
                            weights_bytes(model), torch.device("cpu"))


def test_training_lowers_the_izif_loss(trained):
    history = trained.fit_result.history
    assert len(history) == 8
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert trained.fit_result.best_holdout < history[0]["holdout_loss"]


def test_element_scores_sum_to_the_anomaly_score(trained):
    x = _probe()
    with torch.no_grad():
        elements = trained.element_scores(x)
        xf = x.reshape(len(x), -1)
        g = trained.generator(trained.encoder(xf))
        lam = trained.params.lambda_
        expected = (1 - lam) * (xf - g).abs().sum(1) + lam * (
            trained.features(xf) - trained.features(g)
        ).abs().sum(1)
    assert elements.shape == x.shape
    assert torch.isfinite(elements).all() and (elements >= 0).all()
    torch.testing.assert_close(elements.sum(dim=(1, 2)), expected, rtol=1e-5, atol=1e-5)


def test_anomalous_windows_score_higher(trained):
    x = _probe()
    bad = x.clone()
    bad[:, 3, 1] += 4.0  # a spike in one sensor
    with torch.no_grad():
        normal, spiked = trained.element_scores(x), trained.element_scores(bad)
    assert (spiked.sum(dim=(1, 2)) > normal.sum(dim=(1, 2))).float().mean() > 0.9
    # the spike is explained by its own element more than by any other
    gain = (spiked - normal).mean(dim=0)
    assert gain.argmax() == 3 * F + 1


def test_row_contributions_add_up(trained):
    windows = _windows(_series(120, seed=2))
    contrib, cover = row_contributions(trained, windows, batch_size=32)
    with torch.no_grad():
        window_scores = trained.element_scores(windows.batch(torch.arange(len(windows)))).sum(dim=(1, 2))
    assert torch.isfinite(contrib).all() and (cover > 0).all()
    # each window's element scores are spread over its rows: totals agree
    torch.testing.assert_close(
        (contrib * cover[:, None]).sum(), window_scores.sum(), rtol=1e-4, atol=1e-3
    )


def test_save_load_gives_identical_scores(trained):
    loaded = model_from_bytes(trained.arguments(), weights_bytes(trained), torch.device("cpu"))
    x = _probe()
    with torch.no_grad():
        assert torch.equal(loaded.element_scores(x), trained.element_scores(x))


def test_search_mode_improves_on_its_encoder_warm_start(trained):
    search = _with_params(trained, mode="search", search_steps=30)
    x = _probe()
    with torch.no_grad():
        enc = trained.element_scores(x).sum(dim=(1, 2))
        found = search.element_scores(x)
        again = search.element_scores(x)
    assert found.shape == x.shape and torch.isfinite(found).all()
    assert torch.equal(found, again)  # deterministic: z0 = E(x)
    assert (found.sum(dim=(1, 2)) <= enc + 1e-5).float().mean() > 0.95
    assert found.sum() < enc.sum()
    assert all(p.grad is None for p in search.parameters())  # the search touches z only


def test_random_init_search_is_seeded(trained):
    search = _with_params(trained, mode="search", search_steps=5, search_init="random")
    x = _probe(16)
    with torch.no_grad():
        assert torch.equal(search.element_scores(x), search.element_scores(x))


def test_onnx_export_matches_encoder_mode(trained):
    x = _probe()
    scorer = OnnxScorer(export_onnx(trained))
    with torch.no_grad():
        expected = trained.element_scores(x)
    assert float((scorer.element_scores(x) - expected).abs().max()) < 1e-4
    # the original model keeps its spectral norm after export
    with torch.no_grad():
        assert torch.equal(trained.element_scores(x), expected)


def test_search_mode_graph_is_the_unrolled_search(trained):
    """The hand-written gradients and Adam steps reproduce autograd's search, in torch and
    through ONNX Runtime, and differ from the encoder-mode scores they start from."""
    search = _with_params(trained, mode="search", search_steps=30)
    x = _probe(64)
    with torch.no_grad():
        expected = search.element_scores(x)
        unrolled = search.export_module()(x)
        encoder = trained.element_scores(x)
    torch.testing.assert_close(unrolled, expected, rtol=1e-4, atol=1e-5)
    assert float((expected - encoder).abs().max()) > 1e-3
    got = OnnxScorer(export_onnx(search)).element_scores(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_search_from_random_starts_refuses_export_and_says_why(trained):
    search = _with_params(trained, mode="search", search_init="random")
    with pytest.raises(NotImplementedError, match="seeded generator"):
        search.export_module()


def test_resume_after_a_kill_continues_from_the_checkpoint():
    windows = _windows(_series(300))
    checkpoints = []
    torch.manual_seed(0)  # same initial weights for the uninterrupted and the killed run
    full = build_model("anogan", F, L, SMALL)
    fit(full, windows, _settings(3))
    torch.manual_seed(0)
    killed = build_model("anogan", F, L, SMALL)
    fit(killed, windows, _settings(2), on_epoch_end=lambda e, ckpt: checkpoints.append(ckpt))
    resumed = build_model("anogan", F, L, SMALL)  # fresh weights: the checkpoint must win
    result = fit(resumed, windows, _settings(3), resume=checkpoints[-1])
    assert result.resumed_from_epoch == 1
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        build_model("anogan", F, L, {"mode": "fast"})
