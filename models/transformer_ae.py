"""Transformer autoencoder over windows, with a pooled bottleneck so it cannot copy its input.

Encoder: linear embedding + sinusoidal positions -> TransformerEncoder -> mean over
steps -> a `latent`-sized vector. Decoder: that vector broadcast to every step plus
the positions -> TransformerEncoder -> linear head. The decoder sees nothing of the
input but the latent (latent < L * F is enforced), which is what stops it from
learning the identity. Element score = squared reconstruction error.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator
from torch import nn

from models.base import FamilyParams, WindowModel


class TransformerAEParams(FamilyParams):
    d_model: int = Field(32, ge=2)
    heads: int = Field(4, ge=1)
    layers: int = Field(2, ge=1, description="layers in the encoder and in the decoder")
    feedforward: int = Field(64, ge=1)
    latent: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerAEParams:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """(1, L, d_model) fixed positional encoding (Vaswani et al.)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return pe.unsqueeze(0)


def _stack(p: TransformerAEParams) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(p.d_model, p.heads, p.feedforward, p.dropout,
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)


class TransformerAE(WindowModel):
    name = "transformer_ae"
    description = "Transformer autoencoder with a pooled latent bottleneck; score = squared error"
    Params = TransformerAEParams

    def __init__(self, n_features: int, window: int, params: TransformerAEParams) -> None:
        super().__init__(n_features, window, params)
        if params.latent >= n_features * window:
            raise ValueError(
                f"family 'transformer_ae': latent ({params.latent}) must be smaller than "
                f"window * features ({window * n_features}), else it can learn the identity"
            )
        self.embed = nn.Linear(n_features, params.d_model)
        self.register_buffer("positions", sinusoidal_positions(window, params.d_model),
                             persistent=False)
        self.encoder = _stack(params)
        self.to_latent = nn.Linear(params.d_model, params.latent)
        self.from_latent = nn.Linear(params.latent, params.d_model)
        self.decoder = _stack(params)
        self.head = nn.Linear(params.d_model, n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.positions[:, : x.shape[1]]  # (1, L, d)
        h = self.encoder(self.embed(x) + pos)  # (B, L, d)
        z = self.to_latent(h.mean(dim=1))  # (B, latent): the bottleneck
        y = self.decoder(self.from_latent(z).unsqueeze(1) + pos)  # (B, L, d)
        return self.head(y)  # (B, L, F)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return (self(x).float() - x.float()).pow(2).mean()

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        return (self(x).float() - x.float()).pow(2)
