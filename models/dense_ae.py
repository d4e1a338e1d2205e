"""Dense autoencoder over a flattened window: the chapter's first family, done right.

Linear output (the data is standardised, so a Sigmoid would clip it) and a
squared-error loss; the element score is the squared reconstruction error.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from models.base import FamilyParams, WindowModel


class DenseAEParams(FamilyParams):
    hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
    latent: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with ReLU between them and none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DenseAE(WindowModel):
    name = "dense_ae"
    description = "Dense autoencoder on flattened windows; score = squared reconstruction error"
    Params = DenseAEParams

    def __init__(self, n_features: int, window: int, params: DenseAEParams) -> None:
        super().__init__(n_features, window, params)
        d = n_features * window
        self.encoder = mlp([d, *params.hidden, params.latent], params.dropout)
        self.decoder = mlp([params.latent, *reversed(params.hidden), d], params.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        z = self.encoder(x.reshape(b, -1))  # (B, latent)
        return self.decoder(z).reshape(x.shape)  # (B, L, F)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return (self(x) - x).pow(2).mean()

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        return (self(x).float() - x.float()).pow(2)
