"""USAD: UnSupervised Anomaly Detection on multivariate time series (Audibert et al., KDD 2020).

One encoder E, two decoders D1, D2: AE1 = D1(E(.)), AE2 = D2(E(.)). Training is
two-phase and adversarial, with weights that move from plain reconstruction to
the adversarial game as epochs pass (n = epoch number, from 1):
  AE1 minimises  1/n |x - AE1(x)|^2 + (1 - 1/n) |x - AE2(AE1(x))|^2  (fool AE2)
  AE2 minimises  1/n |x - AE2(x)|^2 - (1 - 1/n) |x - AE2(AE1(x))|^2  (spot AE1's output)
Element score = alpha * (x - AE1(x))^2 + beta * (x - AE2(AE1(x)))^2, so the window
score is the paper's alpha * |x - AE1(x)|^2 + beta * |x - AE2(AE1(x))|^2.
Decoder outputs are b * tanh(y / b) (default b = 5), not the paper's Sigmoid, which
assumes [0, 1] data: bounded, so the adversarial game cannot diverge, and roomy enough
for standardised data.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator

from models.base import FamilyParams, WindowModel
from models.dense_ae import mlp


class USADParams(FamilyParams):
    hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
    latent: int = Field(16, ge=1)
    alpha: float = Field(0.5, ge=0.0, description="weight of |x - AE1(x)|^2 in the score")
    beta: float = Field(0.5, ge=0.0, description="weight of |x - AE2(AE1(x))|^2 in the score")
    output_bound: float | None = Field(
        5.0, gt=0.0, description="decoder outputs squashed to (-b, b); None: unbounded"
    )

    @model_validator(mode="after")
    def _some_weight(self) -> USADParams:
        if self.alpha + self.beta <= 0:
            raise ValueError("alpha + beta must be > 0")
        return self


def _mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.float() - y.float()).pow(2).mean()


class USAD(WindowModel):
    name = "usad"
    description = "USAD (KDD 2020): two adversarial decoders; score = a|x-AE1|^2 + b|x-AE2(AE1)|^2"
    Params = USADParams

    def __init__(self, n_features: int, window: int, params: USADParams) -> None:
        super().__init__(n_features, window, params)
        d = n_features * window
        self.encoder = mlp([d, *params.hidden, params.latent])
        self.decoder1 = mlp([params.latent, *reversed(params.hidden), d])
        self.decoder2 = mlp([params.latent, *reversed(params.hidden), d])

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.reshape(x.shape[0], -1))  # (B, latent)

    def _bound(self, y: torch.Tensor) -> torch.Tensor:
        """b * tanh(y / b): AE2's adversarial term rewards a large |x - AE2(AE1(x))|, so
        unbounded outputs let it run off (seen on CUDA: holdout 0.06 -> 363 in 3 epochs);
        the paper's Sigmoid bounds them for [0, 1] data, this does for standardised data."""
        b = self.params.output_bound
        return y if b is None else b * torch.tanh(y / b)

    def ae1(self, x: torch.Tensor) -> torch.Tensor:
        return self._bound(self.decoder1(self._encode(x))).reshape(x.shape)

    def ae2(self, x: torch.Tensor) -> torch.Tensor:
        return self._bound(self.decoder2(self._encode(x))).reshape(x.shape)

    def configure_optimizers(self, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
        """AE1 = encoder + decoder1, AE2 = encoder + decoder2 (the encoder is shared)."""
        enc = list(self.encoder.parameters())
        return [
            torch.optim.Adam(enc + list(self.decoder1.parameters()), lr=lr, weight_decay=weight_decay),
            torch.optim.Adam(enc + list(self.decoder2.parameters()), lr=lr, weight_decay=weight_decay),
        ]

    def training_step(
        self, x: torch.Tensor, optimizers: list[torch.optim.Optimizer], autocast: Any
    ) -> torch.Tensor:
        """Phase 1 updates AE1, phase 2 updates AE2; returns the score objective of phase 1."""
        opt1, opt2 = optimizers
        n = self.current_epoch + 1
        self.zero_grad(set_to_none=True)
        with autocast():
            w1 = self.ae1(x)
            rec1, rec3 = _mse(x, w1), _mse(x, self.ae2(w1))
            loss1 = rec1 / n + (1 - 1 / n) * rec3
        loss1.backward()
        opt1.step()
        self.zero_grad(set_to_none=True)  # grads of loss1 must not leak into phase 2
        with autocast():
            w1 = self.ae1(x)
            loss2 = _mse(x, self.ae2(x)) / n - (1 - 1 / n) * _mse(x, self.ae2(w1))
        loss2.backward()
        opt2.step()
        self.zero_grad(set_to_none=True)
        return (self.params.alpha * rec1 + self.params.beta * rec3).detach()

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The score objective (what early stopping watches); training uses `training_step`."""
        w1 = self.ae1(x)
        return self.params.alpha * _mse(x, w1) + self.params.beta * _mse(x, self.ae2(w1))

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        w1 = self.ae1(x)
        w3 = self.ae2(w1)
        x = x.float()
        return self.params.alpha * (x - w1.float()).pow(2) + self.params.beta * (x - w3.float()).pow(2)
