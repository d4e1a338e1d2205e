"""Variational autoencoder over a flattened window, with a likelihood that fits the data.

The chapter decodes through a Sigmoid and scores with BCE, which only makes sense
for data in [0, 1]; our windows are standardised, so the default likelihood is a
Gaussian with a learned per-feature variance (Bernoulli stays available for data
scaled to [0, 1] by `scaling.method = "minmax"`).

Score relation (per window, at the latent mean, no sampling so scores are
deterministic): element score = 0.5 * (x - x_hat)^2 / sigma_f^2 + beta * KL / (L * F),
so the sum over (L, F) is the window's Gaussian NLL minus its constant
L * sum_f 0.5 * log(2 * pi * sigma_f^2) (the same for every window), plus beta * KL.
For the Bernoulli likelihood the first term is the per-element BCE.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from models.base import FamilyParams, WindowModel
from models.dense_ae import mlp

log = logging.getLogger(__name__)

_LOG_2PI = 1.8378770664093453


class VAEParams(FamilyParams):
    hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
    latent: int = Field(8, ge=1)
    beta: float = Field(1.0, ge=0.0, description="weight of the KL term in loss and score")
    likelihood: Literal["gaussian", "bernoulli"] = "gaussian"
    learn_variance: bool = Field(True, description="Gaussian only: learn one variance per feature")


class VAE(WindowModel):
    name = "vae"
    description = "Variational autoencoder (Gaussian likelihood); score = reconstruction NLL + beta*KL"
    Params = VAEParams

    def __init__(self, n_features: int, window: int, params: VAEParams) -> None:
        super().__init__(n_features, window, params)
        d = n_features * window
        self.encoder = mlp([d, *params.hidden, 2 * params.latent])
        self.decoder = mlp([params.latent, *reversed(params.hidden), d])
        log_var = torch.zeros(n_features)
        if params.likelihood == "gaussian" and params.learn_variance:
            self.log_var = nn.Parameter(log_var)
        else:
            self.register_buffer("log_var", log_var)
        self._range_checked = False

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, latent)."""
        mu, logvar = self.encoder(x.reshape(x.shape[0], -1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Gaussian means, or Bernoulli logits, shaped like the input (B, L, F)."""
        return self.decoder(z).reshape(shape)

    def latent_means(self, x: torch.Tensor) -> torch.Tensor:
        """(B, latent) posterior means, for latent-space plots."""
        return self.encode(x)[0]

    def _parts(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(element data term (B, L, F) without constants, KL per window (B,))."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        out = self.decode(z, x.shape).float()
        x = x.float()
        if self.params.likelihood == "bernoulli":
            data = F.softplus(out) - x * out  # BCE with logits, >= 0 for x in [0, 1]
        else:
            data = 0.5 * (x - out).pow(2) * (-self._log_var()).exp()
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).float().sum(dim=-1)
        return data, kl.clamp(min=0.0)

    def _log_var(self) -> torch.Tensor:
        return self.log_var.float().clamp(-8.0, 8.0)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per element: sampled while training, at the mean in eval mode."""
        self._check_range(x)
        data, kl = self._parts(x, sample=self.training)
        if self.params.likelihood == "gaussian":
            data = data + 0.5 * (self._log_var() + _LOG_2PI)
        n = x.shape[1] * x.shape[2]
        return (data.sum(dim=(1, 2)) + self.params.beta * kl).mean() / n

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        data, kl = self._parts(x, sample=False)
        spread = self.params.beta * kl / (x.shape[1] * x.shape[2])
        return data + spread[:, None, None]

    def _check_range(self, x: torch.Tensor) -> None:
        """Bernoulli needs [0, 1] data; checked once (a device sync) rather than every step."""
        if self.params.likelihood != "bernoulli" or self._range_checked:
            return
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"family 'vae': likelihood 'bernoulli' needs data scaled to [0, 1] "
                f"(scaling.method = 'minmax'); got values in [{lo:.3g}, {hi:.3g}]"
            )
        self._range_checked = True
