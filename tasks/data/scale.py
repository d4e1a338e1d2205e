"""Scaling fitted on the train split only, kept as JSON so scoring uses exactly the same map."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

Method = Literal["standard", "robust", "minmax"]


@dataclass(frozen=True)
class ScalerParams:
    """x_scaled = (x - center) / scale, per feature."""

    method: str
    features: list[str]
    center: list[float]
    scale: list[float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScalerParams:
        return cls(data["method"], list(data["features"]), list(data["center"]), list(data["scale"]))


def fit_scaler(frame: pl.DataFrame, features: list[str], method: Method) -> ScalerParams:
    """Fit on the rows given (callers pass the train split only). Constant features get scale 1."""
    if frame.height == 0:
        raise ValueError("cannot fit a scaler on zero rows: the train split is empty")
    cols = [pl.col(f) for f in features]
    if method == "standard":
        center = frame.select(c.mean() for c in cols).row(0)
        scale = frame.select(c.std() for c in cols).row(0)
    elif method == "robust":
        center = frame.select(c.median() for c in cols).row(0)
        q75 = frame.select(c.quantile(0.75, "linear") for c in cols).row(0)
        q25 = frame.select(c.quantile(0.25, "linear") for c in cols).row(0)
        scale = tuple(a - b for a, b in zip(q75, q25))
    elif method == "minmax":
        center = frame.select(c.min() for c in cols).row(0)
        hi = frame.select(c.max() for c in cols).row(0)
        scale = tuple(a - b for a, b in zip(hi, center))
    else:
        raise ValueError(f"unknown scaling method {method!r}; use standard, robust or minmax")
    safe = [float(s) if s is not None and np.isfinite(s) and s > 1e-12 else 1.0 for s in scale]
    return ScalerParams(method, list(features), [float(c) for c in center], safe)


def apply_scaler(frame: pl.DataFrame, params: ScalerParams) -> pl.DataFrame:
    """One vectorised pass; features become Float32 (what the models consume)."""
    return frame.with_columns(
        ((pl.col(f) - c) / s).cast(pl.Float32).alias(f)
        for f, c, s in zip(params.features, params.center, params.scale)
    )
