"""LSTM autoencoder for windows (B, L, F): encoder state -> latent -> decoder.

The encoder's last hidden state is squeezed into a small latent; the decoder
unrolls that latent over L steps. Errors stay per step and per feature, so row
scores and feature contributions map back exactly (element score = squared error).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from models.base import FamilyParams, WindowModel


class LSTMAEParams(FamilyParams):
    hidden: int = Field(64, ge=1)
    layers: int = Field(1, ge=1)
    latent: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="between LSTM layers (layers > 1)")


class LSTMAE(WindowModel):
    name = "lstm_ae"
    description = "LSTM autoencoder (encoder state -> latent -> decoder); score = squared error"
    Params = LSTMAEParams

    def __init__(self, n_features: int, window: int, params: LSTMAEParams) -> None:
        super().__init__(n_features, window, params)
        dropout = params.dropout if params.layers > 1 else 0.0
        self.encoder = nn.LSTM(n_features, params.hidden, params.layers, batch_first=True,
                               dropout=dropout)
        self.to_latent = nn.Linear(params.hidden, params.latent)
        self.from_latent = nn.Linear(params.latent, params.hidden)
        self.decoder = nn.LSTM(params.hidden, params.hidden, params.layers, batch_first=True,
                               dropout=dropout)
        self.output = nn.Linear(params.hidden, n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.encoder(x)  # h: (layers, B, hidden)
        z = self.to_latent(h[-1])  # (B, latent)
        steps = self.from_latent(z).unsqueeze(1).expand(-1, x.shape[1], -1)  # (B, L, hidden)
        y, _ = self.decoder(steps)  # (B, L, hidden)
        return self.output(y)  # (B, L, F)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return (self(x).float() - x.float()).pow(2).mean()

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        return (self(x).float() - x.float()).pow(2)
