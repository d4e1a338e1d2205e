"""Classical baselines (PCA reconstruction, IsolationForest) under the deep families' contract.

Why: they are strong on server metrics and keep the deep families honest, so
they must be scored, explained, stored and exported exactly like them. Both
work on flattened windows (B, L*F), are fitted in closed form by the engine's
`fit_direct` hook (no gradient loop), and keep their fitted state in buffers,
so weights are safetensors and scoring needs neither sklearn nor pickle.

Per-feature relations:
- pca: element score = squared reconstruction error; it sums to the window's
  squared error exactly (the same number as sklearn's PCA inverse_transform).
- iforest: window score s(x) = 2^(-E[h(x)] / c(psi)) (the paper's score, i.e.
  -sklearn `score_samples`). It is attributed to the elements by path-split
  attribution: every split on x's root-to-leaf path credits its split element
  with the bits of isolation it achieved, log2(n_parent / n_child) (training
  samples in the node x left and the one it entered); an element's share is
  its credited bits over the path's total, sum over trees of log2(psi / n_leaf).
  So the element that cut x off from the normal data explains it (counting
  splits instead credits the features x is *not* unusual in: its paths end as
  soon as the unusual one is drawn). The parts sum to s(x) exactly; a path with
  no split at all (single-node trees) spreads s(x) evenly.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from pydantic import Field
from sklearn.ensemble import IsolationForest

from models.base import FamilyParams, WindowModel
from models.engine import WindowSet

log = logging.getLogger(__name__)


class DirectFitModel(WindowModel):
    """Base of closed-form families: fitted buffers whose shapes are only known after fit."""

    trainable = False
    _fitted_buffers: tuple[str, ...] = ()

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).float()  # (B, L*F)

    def _set(self, name: str, value: torch.Tensor) -> None:
        self.register_buffer(name, value)

    def _check_fitted(self) -> None:
        if 0 in self.get_buffer(self._fitted_buffers[0]).shape:  # shape, not numel: no tracer warning
            raise RuntimeError(f"{self.name}: not fitted; train it with models.engine.fit first")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Adopt the stored shapes of fitted buffers (a new model holds empty ones)."""
        for name in self._fitted_buffers:
            if prefix + name in state_dict:
                stored = state_dict[prefix + name]
                self._set(name, torch.empty(stored.shape, dtype=stored.dtype,
                                            device=self.get_buffer(name).device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean window score: what the engine reports as train / holdout loss."""
        return self.element_scores(x).sum(dim=(1, 2)).mean()


def all_windows(windows: WindowSet, batch: int = 65536) -> torch.Tensor:
    """Every window of the set, flattened to (N, L*F); the one copy a closed-form fit needs."""
    parts = [windows.batch(torch.arange(i, min(i + batch, len(windows)), device=windows.series.device))
             for i in range(0, len(windows), batch)]
    return torch.cat(parts).reshape(len(windows), -1).float()


# -- PCA ------------------------------------------------------------------------------
class PCAParams(FamilyParams):
    n_components: int | None = Field(None, ge=1, description="fixed number of components")
    variance: float = Field(0.95, gt=0.0, le=1.0, description="else: explained-variance fraction kept")


class PCAReconstruction(DirectFitModel):
    name = "pca"
    description = "PCA on flattened windows; score = squared reconstruction error"
    Params = PCAParams
    _fitted_buffers = ("components", "mean")

    def __init__(self, n_features: int, window: int, params: PCAParams) -> None:
        super().__init__(n_features, window, params)
        self.register_buffer("components", torch.empty(0, n_features * window))  # (k, D)
        self.register_buffer("mean", torch.empty(0))  # (D,)

    def fit_direct(self, windows: WindowSet) -> None:
        """SVD of the centred training windows in float64; keeps k leading axes."""
        x = all_windows(windows).double()
        mean = x.mean(dim=0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        k = self._n_kept(s)
        self._set("mean", mean.float())
        self._set("components", vh[:k].float().contiguous())
        log.info("pca: kept %d of %d components", k, len(s))

    def _n_kept(self, s: torch.Tensor) -> int:
        if self.params.n_components is not None:
            return min(self.params.n_components, len(s))
        ratio = s.pow(2).cumsum(0) / s.pow(2).sum().clamp(min=1e-30)
        return int(torch.searchsorted(ratio, torch.tensor(self.params.variance, dtype=ratio.dtype, device=ratio.device))) + 1

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        c = self._flat(x) - self.mean  # (B, D)
        recon = (c @ self.components.T) @ self.components
        return (c - recon).pow(2).reshape(x.shape)


# -- IsolationForest ------------------------------------------------------------------
class IForestParams(FamilyParams):
    n_estimators: int = Field(100, ge=1)
    max_samples: int | None = Field(None, ge=2, description="None: sklearn's 'auto' = min(256, n)")
    max_features: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0


class IsolationForestModel(DirectFitModel):
    """sklearn's forest, converted to padded node tables evaluated in torch.

    Buffers, all (T, N) with T trees and N = the largest node count: `feature`
    (split element, -1 at leaves), `threshold` (float32 rounded down, so that
    x <= t in float32 matches sklearn's float32 x <= float64 threshold exactly),
    `left`/`right` (child ids; a leaf points to itself), `leaf_depth` (depth +
    c(n_node_samples): the path length sklearn adds at a leaf), `gain`
    (log2(n_parent / n_node): the bits a node's entry isolates); `norm` is
    T * c(max_samples) and `max_depth` bounds the walk.
    """

    name = "iforest"
    description = "IsolationForest on flattened windows, evaluated in torch; path-split attribution"
    Params = IForestParams
    _fitted_buffers = ("feature", "threshold", "left", "right", "leaf_depth", "gain", "norm",
                       "max_depth")

    def __init__(self, n_features: int, window: int, params: IForestParams) -> None:
        super().__init__(n_features, window, params)
        for name in ("feature", "left", "right"):
            self.register_buffer(name, torch.empty(0, 0, dtype=torch.long))
        self.register_buffer("threshold", torch.empty(0, 0))
        self.register_buffer("leaf_depth", torch.empty(0, 0))
        self.register_buffer("gain", torch.empty(0, 0))
        self.register_buffer("norm", torch.empty(0))
        self.register_buffer("max_depth", torch.empty(0, dtype=torch.long))
        self.steps = 0  # walk length, a plain int so an ONNX trace unrolls it as a constant

    def fit_direct(self, windows: WindowSet) -> None:
        x = all_windows(windows).cpu().numpy()
        self.adopt(self.sklearn_forest().fit(x))

    def sklearn_forest(self) -> IsolationForest:
        p = self.params
        return IsolationForest(
            n_estimators=p.n_estimators, max_samples=p.max_samples or "auto",
            max_features=p.max_features, random_state=p.seed,
        )

    def adopt(self, forest: IsolationForest) -> None:
        """Take a fitted sklearn forest's trees into this model's buffers."""
        tables = forest_tables(forest)
        device = self.norm.device
        for name, value in tables.items():
            self._set(name, torch.from_numpy(value).to(device))
        self.steps = int(self.max_depth)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.steps = int(self.max_depth) if self.max_depth.numel() else 0

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        xf = self._flat(x)
        score, bits = self.walk(xf)  # (B,), (B, D)
        total = bits.sum(dim=1, keepdim=True)
        even = torch.full_like(bits, 1 / xf.shape[1])
        share = torch.where(total > 0, bits / total.clamp(min=1e-12), even)
        return (score[:, None] * share).reshape(x.shape)

    def walk(self, xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All trees at once, max_depth steps: (window score (B,), isolation bits per element (B, D)).

        The node tables are packed into one integer and one float table, so a step is
        two row gathers (the split, then the node entered) and the isolation bits are
        one scatter at the end: ONNX Runtime's per-index Gather dominated the graph
        (5 per step), and the sums are the same, in the same order."""
        b, t = xf.shape[0], self.feature.shape[0]
        n = self.feature.shape[1]
        base = (torch.arange(t, device=xf.device) * n).expand(b, t)  # node id offset of each tree
        splits = torch.stack([self.feature.clamp(min=0), self.left, self.right], -1).reshape(-1, 3)
        inner = (self.feature >= 0).to(xf.dtype)
        nodes = torch.stack([self.threshold, self.gain, inner, self.leaf_depth], -1).reshape(-1, 4)
        node = torch.zeros(b, t, dtype=torch.long, device=xf.device)
        at = nodes[base]  # (B, T, 4): the node each walk is at
        feats, credits = [], []
        for _ in range(self.steps):
            split = splits[base + node]  # (B, T, 3)
            feat = split[..., 0]
            go_left = xf.gather(1, feat) <= at[..., 0]
            node = torch.where(go_left, split[..., 1], split[..., 2])
            entered = nodes[base + node]
            feats.append(feat)
            credits.append(at[..., 2] * entered[..., 1])  # bits of the split just taken
            at = entered
        bits = torch.zeros_like(xf)
        if feats:  # no step at all when every tree is a single leaf
            bits = bits.scatter_add(1, torch.cat(feats, 1), torch.cat(credits, 1))
        depth = at[..., 3].sum(dim=1)  # (B,)
        return torch.pow(2.0, -depth / self.norm), bits


def forest_tables(forest: IsolationForest) -> dict[str, np.ndarray]:
    """Padded (T, N) node tables of a fitted sklearn IsolationForest (see the class doc)."""
    trees = [est.tree_ for est in forest.estimators_]
    n = max(tr.node_count for tr in trees)
    t = len(trees)
    feature = np.full((t, n), -1, dtype=np.int64)
    threshold = np.zeros((t, n), dtype=np.float32)
    left = np.tile(np.arange(n, dtype=np.int64), (t, 1))
    right = left.copy()
    leaf_depth = np.zeros((t, n), dtype=np.float32)
    gain = np.zeros((t, n), dtype=np.float32)
    for i, (tr, cols) in enumerate(zip(trees, forest.estimators_features_)):
        m = tr.node_count
        inner = tr.children_left[:m] >= 0
        feature[i, :m][inner] = np.asarray(cols)[tr.feature[:m][inner]]
        threshold[i, :m] = _round_down_f32(tr.threshold[:m])
        left[i, :m][inner] = tr.children_left[:m][inner]
        right[i, :m][inner] = tr.children_right[:m][inner]
        leaf_depth[i, :m] = _node_depths(tr.children_left[:m], tr.children_right[:m]) + _avg_path(
            tr.n_node_samples[:m]
        )
        gain[i, :m] = _isolation_bits(tr.children_left[:m], tr.children_right[:m], tr.n_node_samples[:m])
    return {
        "feature": feature, "threshold": threshold, "left": left, "right": right,
        "leaf_depth": leaf_depth, "gain": gain,
        "norm": np.array([t * _avg_path(np.array([forest.max_samples_]))[0]], dtype=np.float32),
        "max_depth": np.array(max(tr.max_depth for tr in trees), dtype=np.int64),
    }


def _round_down_f32(values: np.ndarray) -> np.ndarray:
    """Largest float32 <= each float64 value: float32 x <= it iff x <= the float64 value."""
    out = values.astype(np.float32)
    over = out.astype(np.float64) > values
    out[over] = np.nextafter(out[over], np.float32(-np.inf))
    return out


def _node_depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Depth of every node (root 0); sklearn numbers children after their parent."""
    depth = np.zeros(len(left), dtype=np.float64)
    for node in range(len(left)):  # one pass over a few hundred nodes per tree, at fit time
        if left[node] >= 0:
            depth[left[node]] = depth[right[node]] = depth[node] + 1
    return depth


def _isolation_bits(left: np.ndarray, right: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """log2(n_parent / n_node) for every node (0 at the root)."""
    bits = np.zeros(len(left), dtype=np.float64)
    inner = np.flatnonzero(left >= 0)
    for child in (left[inner], right[inner]):
        bits[child] = np.log2(samples[inner] / samples[child])
    return bits


def _avg_path(n: np.ndarray) -> np.ndarray:
    """c(n): average path length of an unsuccessful BST search among n points."""
    n = n.astype(np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out
