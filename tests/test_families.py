"""Every registered torch family on the one engine: it learns, scores, explains, saves, exports.

Parametrized over models.registry.FAMILIES, so a family added to the registry is
covered without touching this file; the ensemble of them all keeps the same contract. Data: a tiny multivariate sine series.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from models.base import WindowModel
from models.engine import EngineSettings, WindowSet, fit
from models.registry import FAMILIES, build_model
from models.scoring import row_contributions
from tasks.data.window import window_starts
from tasks.evaluation.combiners import combine_rows, member_weights, robust_normaliser
from tasks.scoring import OnnxScorer, numpy_row_contributions
from tasks.training.export import ROW_TOLERANCE, check_export, export_onnx, torch_elements
from tasks.training.probe import Probe
from tasks.versions import model_from_bytes, weights_bytes

torch.set_num_threads(2)

WINDOW, FEATURES, N_WINDOWS = 8, 3, 1000
TORCH_FAMILIES = sorted(n for n, cls in FAMILIES.items() if issubclass(cls, WindowModel))
# Closed-form families (trainable = False) have no loss trajectory to watch.
LOOP_FAMILIES = [n for n in TORCH_FAMILIES if getattr(FAMILIES[n], "trainable", True)]


def tiny_series(rows: int = N_WINDOWS + WINDOW - 1, seed: int = 0) -> torch.Tensor:
    """(T, F): phase-shifted sines plus a little noise, roughly standardised."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(rows, dtype=torch.float32)[:, None]
    phase = torch.arange(FEATURES, dtype=torch.float32)[None, :]
    return 1.3 * torch.sin(t / 4 + phase) + 0.1 * torch.randn(rows, FEATURES, generator=gen)


def all_windows(series: torch.Tensor, stride: int = 1) -> WindowSet:
    return WindowSet(series, torch.arange(0, series.shape[0] - WINDOW + 1, stride), WINDOW)


@torch.no_grad()
def eval_loss(model: WindowModel, x: torch.Tensor) -> float:
    model.eval()
    return float(model.holdout_loss(x))


@cache
def trained(name: str) -> tuple[WindowModel, WindowSet, float, float]:
    """(model, windows, holdout loss before, after) — trained once per family per session."""
    torch.manual_seed(0)
    windows = all_windows(tiny_series())
    model = build_model(name, FEATURES, WINDOW, {})
    x = windows.batch(torch.arange(len(windows)))
    before = eval_loss(model, x) if name in LOOP_FAMILIES else float("nan")
    fit(model, windows, EngineSettings(epochs=4, batch_size=32, lr=3e-3, patience=10, seed=0,
                                       device="cpu", max_train_windows=320))
    return model, windows, before, eval_loss(model, x)


@pytest.mark.parametrize("name", LOOP_FAMILIES)
def test_loss_falls(name: str) -> None:
    _, _, before, after = trained(name)
    # Falls by a fifth at least (VAE's loss carries a Gaussian constant, so no ratio to 0).
    assert before - after > 0.2 * abs(before), f"{name}: holdout loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name", TORCH_FAMILIES)
def test_scores_shape_finite_nonnegative(name: str) -> None:
    model, windows, _, _ = trained(name)
    with torch.no_grad():
        scores = model.element_scores(windows.batch(torch.arange(50)))
    assert scores.shape == (50, WINDOW, FEATURES)
    assert scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    assert (scores >= 0).all()


@pytest.mark.parametrize("rule", ["mean_elem", "mean_window"])
@pytest.mark.parametrize("name", TORCH_FAMILIES)
def test_contributions_add_up_to_window_scores(name: str, rule: str) -> None:
    model, windows, _, _ = trained(name)
    series = windows.series
    # Non-overlapping windows: each row is covered once, so a window's rows carry its score.
    tiles = all_windows(series, stride=WINDOW)
    contrib, cover = row_contributions(model, tiles, rule=rule)
    with torch.no_grad():
        window_scores = model.element_scores(tiles.batch(torch.arange(len(tiles)))).sum(dim=(1, 2))
    covered = len(tiles) * WINDOW
    assert (cover[:covered] == 1).all() and torch.isnan(contrib[covered:]).all()
    per_window = contrib[:covered].sum(dim=1).reshape(len(tiles), WINDOW).sum(dim=1)
    torch.testing.assert_close(per_window, window_scores, rtol=1e-5, atol=1e-5)
    # Overlapping windows: coverage-weighted row scores add up to all window scores.
    contrib, cover = row_contributions(model, windows, batch_size=128, rule=rule)
    with torch.no_grad():
        total = model.element_scores(windows.batch(torch.arange(len(windows)))).sum()
    torch.testing.assert_close((contrib.sum(dim=1) * cover).sum(), total, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", TORCH_FAMILIES)
def test_save_load_round_trip_gives_identical_scores(name: str) -> None:
    model, windows, _, _ = trained(name)
    loaded = model_from_bytes(model.arguments(), weights_bytes(model), torch.device("cpu"))
    x = windows.batch(torch.arange(200))
    with torch.no_grad():
        assert torch.equal(loaded.element_scores(x), model.element_scores(x))


@pytest.mark.parametrize("name", TORCH_FAMILIES)
def test_onnx_parity_on_1000_windows(name: str) -> None:
    model, windows, _, _ = trained(name)
    scorer = OnnxScorer(export_onnx(model))
    x = windows.batch(torch.arange(N_WINDOWS))
    with torch.no_grad():
        expected = model.element_scores(x)
    got = scorer.element_scores(x)
    assert got.shape == expected.shape == (N_WINDOWS, WINDOW, FEATURES)
    assert float((got - expected).abs().max()) < 1e-4
    # The dynamic batch axis: any batch size scores, not just the export example's.
    assert scorer.element_scores(x[:1].numpy()).shape == (1, WINDOW, FEATURES)


def scoring_variant(name: str) -> WindowModel:
    """A trained family; "anogan-search" is AnoGAN's weights scored by latent search."""
    family, _, mode = name.partition("-")
    model = trained(family)[0]
    if not mode:
        return model
    args = model.arguments()
    params = {**args["params"], "mode": mode, "search_steps": 20}
    return model_from_bytes({**args, "params": params}, weights_bytes(model), torch.device("cpu"))


@pytest.mark.parametrize("name", [*TORCH_FAMILIES, "anogan-search"])
def test_checked_export_on_real_rows_flags_the_same_rows(name: str) -> None:
    """Every family (AnoGAN in both modes) ships a graph that passes the export rule."""
    model = scoring_variant(name)
    series = tiny_series(300, seed=1).numpy()
    series[150:153] += 3.0  # an anomaly, so that some rows are flagged
    probe = Probe(series, np.zeros(300, dtype=np.int32), "sine rows")
    starts = window_starts(probe.block, WINDOW, 1)
    scores = numpy_row_contributions(lambda w: torch_elements(model, w), series, starts,
                                     WINDOW)[0].sum(axis=1)
    threshold = float(np.quantile(scores, 0.95))
    data, outcome = check_export(model, probe, threshold)
    assert data is not None and outcome.exported, outcome.reason
    assert outcome.verdict_flips == 0 and outcome.flagged_rows >= 10
    assert outcome.row_max_rel_diff < ROW_TOLERANCE


def test_the_ensemble_of_every_family_keeps_the_score_contract() -> None:
    """The ensemble is scored like any family: per-row contributions whose sum is the row
    score, non-negative, NaN exactly where no full window covers the row; each member
    weighted by 1 / (M * its spread on the rows it was fitted on)."""
    members = [trained(name) for name in TORCH_FAMILIES]
    series = tiny_series(300, seed=1).numpy()
    series[150:153] += 3.0
    starts = window_starts(np.zeros(300, dtype=np.int32), WINDOW, 1)  # one entity
    contributions = [numpy_row_contributions(lambda w, m=m: torch_elements(m, w), series,
                                             starts, WINDOW)[0]
                     for m, *_ in members]
    scales = [robust_normaliser(np.nansum(c, axis=1))["scale"] for c in contributions]
    weights = member_weights(scales)
    scores, contrib = combine_rows(contributions, weights)
    assert contrib.shape == (300, FEATURES) and scores.shape == (300,)
    covered = ~np.isnan(scores)
    assert covered.sum() >= 300 - WINDOW and (scores[covered] >= 0).all()
    np.testing.assert_allclose(contrib[covered].sum(axis=1, dtype=np.float64), scores[covered])
    members_sum = sum(w * np.nansum(c, axis=1) for w, c in zip(weights, contributions))
    np.testing.assert_allclose(scores[covered], members_sum[covered], rtol=1e-5)
    assert np.argmax(np.nan_to_num(scores, nan=-1.0)) in range(150 - WINDOW, 153 + WINDOW)
