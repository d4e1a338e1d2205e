"""knn family specifics (the shared contract is in test_families): a bounded, seeded bank and
scores that are distances to the nearest normal windows."""

from __future__ import annotations

import torch

from models.engine import WindowSet
from models.knn import KNNParams, WindowKNN


def windows(rows: int = 300, seed: int = 0) -> WindowSet:
    series = torch.randn(rows, 3, generator=torch.Generator().manual_seed(seed))
    return WindowSet(series, torch.arange(rows - 8 + 1), 8)


def fitted(bank: int, seed: int = 0, k: int = 3) -> WindowKNN:
    model = WindowKNN(3, 8, KNNParams(bank=bank, seed=seed, k=k, chunk=50))
    model.fit_direct(windows())
    return model.eval()


def test_the_bank_is_bounded_and_drawn_by_the_seed() -> None:
    assert fitted(bank=100).bank.shape == (100, 24)
    assert fitted(bank=10_000).bank.shape == (293, 24)  # every training window when fewer
    torch.testing.assert_close(fitted(100, seed=1).bank, fitted(100, seed=1).bank)
    assert not torch.equal(fitted(100, seed=1).bank, fitted(100, seed=2).bank)


def test_window_score_is_the_mean_squared_distance_to_the_k_nearest() -> None:
    model = fitted(bank=10_000, k=3)
    x = windows(seed=7).batch(torch.arange(120))  # unseen windows, scored in 3 chunks of 50
    bank = model.bank + model.center
    dist = torch.cdist(x.reshape(len(x), -1).double(), bank.double()).pow(2)
    expected = dist.topk(3, largest=False).values.mean(dim=1)
    torch.testing.assert_close(model.element_scores(x).sum(dim=(1, 2)).double(), expected,
                               rtol=1e-4, atol=1e-4)
    own = windows().batch(torch.arange(5))  # training windows are in the bank: nearest at 0
    assert (model.element_scores(own).sum(dim=(1, 2)) < expected[:5]).all()
