"""AnoGAN on flattened windows, with a fast encoder mode in the spirit of f-AnoGAN.

Why it looks like this: the chapter leaves the GAN training out and scores by a
500-step latent search run batch by batch, which is far too slow for a nightly
job. Here one `training_step` does three updates on the same batch:

1. D: non-saturating GAN loss with one-sided label smoothing (real target 0.9);
   spectral norm on every D layer keeps D Lipschitz (no gradient penalty, so no
   double backward on the CPU).
2. G: non-saturating loss, -log D(G(z)).
3. E: the f-AnoGAN "izif" loss |x - G(E(x))|^2 + kappa * |f(x) - f(G(E(x)))|^2,
   with G and D held fixed (only E's optimiser steps).

E trains jointly from the first epoch rather than in a second phase: the engine
owns the loop, checkpoints and early stopping, and a single-phase step keeps
resume trivial. Early stopping watches the izif loss on the holdout (GAN losses
say little about sample quality); it falls only when G can produce the normal
data and E can find it, so the kept weights are a consistent (G, D, E) triple.
All three optimisers are Adam with beta1 = 0.5.

Scoring, A(x) = (1-lambda) |x - G(z*)|_1 + lambda |f(x) - f(G(z*))|_1:
- mode "encoder": z* = E(x), one forward pass (ONNX-exportable);
- mode "search": z is optimised for the whole batch at once on the device (one
  Adam over a (B, latent) tensor), warm-started at z0 = E(x) (deterministic), or
  at seeded N(0, 1) draws with `search_init = "random"` as the chapter does. Its ONNX
  graph unrolls the same fixed number of steps (`_SearchScores`); a random start
  has none (torch's generator cannot be reproduced in ONNX).
Element scores: (1-lambda)|x - G(z*)| per element plus lambda |f(x) - f(G(z*))|_1
spread evenly over the L*F elements, so the window's element scores sum to A(x).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models.base import FamilyParams, WindowModel

log = logging.getLogger(__name__)

REAL_TARGET = 0.9  # one-sided label smoothing


class AnoGANParams(FamilyParams):
    latent: int = Field(32, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [128, 256], min_length=1)
    mode: Literal["encoder", "search"] = "encoder"
    lambda_: float = Field(0.1, ge=0.0, le=1.0)
    kappa: float = Field(1.0, ge=0.0, description="weight of the feature term in E's izif loss")
    search_steps: int = Field(100, ge=1)
    search_lr: float = Field(0.01, gt=0)
    search_init: Literal["encoder", "random"] = "encoder"
    search_seed: int = 0


def _mlp(sizes: list[int], sn: bool = False, out_act: bool = False) -> nn.Sequential:
    """Linear layers with LeakyReLU(0.2) between them (and after the last if `out_act`)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b)
        layers.append(spectral_norm(lin) if sn else lin)
        if out_act or i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class AnoGAN(WindowModel):
    name = "anogan"
    description = (
        "GAN on normal windows (spectral-norm D, label smoothing) with an f-AnoGAN encoder; "
        "score = (1-lambda)|x-G(z*)|_1 + lambda|f(x)-f(G(z*))|_1, z* by encoder or latent search"
    )
    Params = AnoGANParams

    def __init__(self, n_features: int, window: int, params: AnoGANParams) -> None:
        super().__init__(n_features, window, params)
        d = n_features * window
        h = params.hidden
        self.generator = _mlp([params.latent, *h, d])  # linear output: data are standardised
        self.features = _mlp([d, *reversed(h)], sn=True, out_act=True)  # f(x), D's feature layer
        self.critic = spectral_norm(nn.Linear(h[0], 1))  # D's logit
        self.encoder = _mlp([d, *reversed(h), params.latent])

    # -- pieces -------------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)  # (B, L*F)

    def _sample_z(self, b: int, device: torch.device) -> torch.Tensor:
        return torch.randn(b, self.params.latent, device=device)

    def _izif(self, xf: torch.Tensor) -> torch.Tensor:
        """f-AnoGAN's encoder loss on flattened windows (mean over elements)."""
        g = self.generator(self.encoder(xf))
        feat_gap = (self.features(xf) - self.features(g)).pow(2).mean()
        return (xf - g).pow(2).mean() + self.params.kappa * feat_gap

    # -- the contract -------------------------------------------------------------
    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The izif loss: what the step reports and what early stopping watches."""
        return self._izif(self._flat(x))

    def configure_optimizers(self, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
        def adam(*mods: nn.Module) -> torch.optim.Optimizer:
            params = [p for m in mods for p in m.parameters()]
            return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay)

        return [adam(self.features, self.critic), adam(self.generator), adam(self.encoder)]

    def training_step(
        self, x: torch.Tensor, optimizers: list[torch.optim.Optimizer], autocast: Any
    ) -> torch.Tensor:
        """D step, G step, E step on one batch; returns E's izif loss (detached)."""
        opt_d, opt_g, opt_e = optimizers
        xf = self._flat(x)
        b = xf.shape[0]
        with autocast():
            fake = self.generator(self._sample_z(b, xf.device))
            real_logit = self.critic(self.features(xf))
            fake_logit = self.critic(self.features(fake.detach()))
            d_loss = F.binary_cross_entropy_with_logits(
                real_logit.float(), torch.full_like(real_logit.float(), REAL_TARGET)
            ) + F.binary_cross_entropy_with_logits(fake_logit.float(), torch.zeros_like(fake_logit.float()))
        _step(opt_d, d_loss)
        with autocast():
            gen_logit = self.critic(self.features(fake))
            g_loss = F.binary_cross_entropy_with_logits(gen_logit.float(), torch.ones_like(gen_logit.float()))
        _step(opt_g, g_loss)
        with autocast():
            e_loss = self._izif(xf).float()
        _step(opt_e, e_loss)
        return e_loss.detach()

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        xf = self._flat(x).float()
        z = self.encoder(xf) if self.params.mode == "encoder" else self.search_latent(xf)
        return self._scores_at(xf, z).reshape(x.shape)

    def _scores_at(self, xf: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return anomaly_elements(xf, self.generator(z), self.features, self.params.lambda_)

    def search_latent(self, xf: torch.Tensor) -> torch.Tensor:
        """z* for the whole batch at once: Adam over a (B, latent) tensor, grads to z only."""
        z0 = self._initial_z(xf)
        with torch.enable_grad():  # scoring runs under no_grad; the search needs autograd
            z = z0.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.params.search_lr)
            feat_x = self.features(xf).detach()
            lam = self.params.lambda_
            for _ in range(self.params.search_steps):
                g = self.generator(z)
                residual = (xf - g).abs().sum()
                feat_gap = (feat_x - self.features(g)).abs().sum()
                (grad,) = torch.autograd.grad((1 - lam) * residual + lam * feat_gap, z)
                z.grad = grad  # autograd.grad leaves G's and D's .grad untouched
                opt.step()
        return z.detach()

    def _initial_z(self, xf: torch.Tensor) -> torch.Tensor:
        if self.params.search_init == "encoder":
            return self.encoder(xf)
        gen = torch.Generator().manual_seed(self.params.search_seed)
        return torch.randn(xf.shape[0], self.params.latent, generator=gen).to(xf.device)

    def export_module(self) -> nn.Module:
        """The scoring graph of the configured mode.

        Encoder mode is one pass. Search mode is the same fixed number of Adam steps
        the torch search takes, unrolled, with the gradients of the two MLPs written
        out (ONNX has no autograd), so the graph is the search itself, not an
        approximation. A random start cannot be exported: torch's seeded generator
        has no ONNX counterpart, so the graph's draws would differ from the model's.

        Spectral norm is baked into plain weights (its eval-mode value) on a copy:
        ONNX has no op for its power iteration, and scores do not change."""
        if self.params.mode == "search" and self.params.search_init == "random":
            raise NotImplementedError(
                "anogan search mode with search_init='random' has no ONNX graph: its start "
                "points come from torch's seeded generator, which ONNX cannot reproduce "
                "(use search_init='encoder', the default)")
        was_training = self.training
        self.eval()  # sigma at the stored (u, v), with no power-iteration step
        features = _plain(self.features)
        module = (_EncoderScores(self, features, self.params.lambda_)
                  if self.params.mode == "encoder" else _SearchScores(self, features))
        self.train(was_training)
        return module


class _EncoderScores(nn.Module):
    """Encoder-mode element scores with D's feature layer as plain (baked) weights."""

    def __init__(self, model: AnoGAN, features: nn.Module, lambda_: float) -> None:
        super().__init__()
        self.encoder, self.generator, self.features = model.encoder, model.generator, features
        self.lambda_ = lambda_

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.reshape(x.shape[0], -1).float()  # (B, L*F)
        g = self.generator(self.encoder(xf))
        return anomaly_elements(xf, g, self.features, self.lambda_).reshape(x.shape)


class _SearchScores(nn.Module):
    """Search-mode element scores: `search_latent` from z0 = E(x), unrolled for the graph.

    Each step is torch.optim.Adam's update (default betas and eps, bias-corrected) on
    the gradient of (1-lam)|x - G(z)|_1 + lam |f(x) - f(G(z))|_1, back-propagated by
    hand through G and f (Linear and LeakyReLU layers only)."""

    def __init__(self, model: AnoGAN, features: nn.Sequential) -> None:
        super().__init__()
        self.encoder, self.generator, self.features = model.encoder, model.generator, features
        self.lambda_ = model.params.lambda_
        self.steps, self.lr = model.params.search_steps, model.params.search_lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.reshape(x.shape[0], -1).float()  # (B, D)
        z = self.encoder(xf)  # (B, latent)
        feat_x = self.features(xf)
        m, v = torch.zeros_like(z), torch.zeros_like(z)
        (beta1, beta2), eps = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as the search
        for t in range(1, self.steps + 1):
            grad = self._gradient(xf, feat_x, z)
            m = m + (1 - beta1) * (grad - m)  # Adam's lerp_
            v = v * beta2 + (1 - beta2) * grad * grad
            denom = v.sqrt() / (1 - beta2**t) ** 0.5 + eps
            z = z - (self.lr / (1 - beta1**t)) * (m / denom)
        return anomaly_elements(xf, self.generator(z), self.features, self.lambda_).reshape(x.shape)

    def _gradient(self, xf: torch.Tensor, feat_x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """d/dz of the search objective, as autograd computes it in `search_latent`."""
        g, g_inputs = _forward_keeping_inputs(self.generator, z)  # (B, D)
        f_g, f_inputs = _forward_keeping_inputs(self.features, g)
        d_feat = -self.lambda_ * torch.sign(feat_x - f_g)  # d|f(x) - f(g)|_1 / d f(g)
        d_g = -(1 - self.lambda_) * torch.sign(xf - g) + _backward(self.features, f_inputs, d_feat)
        return _backward(self.generator, g_inputs, d_g)


def _forward_keeping_inputs(seq: nn.Sequential, x: torch.Tensor
                            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    inputs = []
    for layer in seq:
        inputs.append(x)
        x = layer(x)
    return x, inputs


def _backward(seq: nn.Sequential, inputs: list[torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
    """The input gradient of a Linear/LeakyReLU stack, given its output gradient."""
    for layer, x in zip(reversed(seq), reversed(inputs)):
        if isinstance(layer, nn.Linear):
            grad = grad @ layer.weight
        elif isinstance(layer, nn.LeakyReLU):
            grad = torch.where(x > 0, grad, grad * layer.negative_slope)
        else:
            raise TypeError(f"no hand-written gradient for {type(layer).__name__}")
    return grad


def anomaly_elements(xf: torch.Tensor, g: torch.Tensor, features: nn.Module, lam: float) -> torch.Tensor:
    """(B, D) element scores of x against its reconstruction g = G(z*); rows sum to A(x):
    (1-lam)|x - g| per element plus lam |f(x) - f(g)|_1 spread evenly over the D elements."""
    feat_gap = (features(xf) - features(g)).abs().sum(dim=1, keepdim=True)  # (B, 1)
    return (1 - lam) * (xf - g).abs() + lam * feat_gap / xf.shape[1]


def _plain(seq: nn.Sequential) -> nn.Sequential:
    """A copy of `seq` whose spectral-norm Linears are plain Linears holding W / sigma.

    (Not deepcopy + remove_parametrizations: the copy shares the parametrized class,
    and removing the property there breaks the original.)"""
    layers: list[nn.Module] = []
    for layer in seq:
        if isinstance(layer, nn.Linear):
            plain = nn.Linear(layer.in_features, layer.out_features, device=layer.bias.device)
            with torch.no_grad():
                plain.weight.copy_(layer.weight)  # eval mode: W / sigma at the stored u, v
                plain.bias.copy_(layer.bias)
            layers.append(plain)
        else:
            layers.append(layer)
    return nn.Sequential(*layers)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
