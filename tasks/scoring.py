"""Rows in, scores out: the one scoring path shared by training, evaluation and nightly runs.

Row rule (models/scoring.py): windows of stride 1 over each entity; a row's
contribution from a feature is the mean of the element scores of every window
containing it, divided by that feature's mean error on normal training rows
(`feature_scale`); the row score is the sum of its contributions, so the
explanation adds up to the score. The scorer is a torch family or its verified
ONNX graph on ONNX Runtime (same call, same numbers within the export tolerance).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import polars as pl
import torch

from models.base import WindowModel
from models.engine import WindowSet
from models.scoring import row_contributions
from tasks.data.window import window_starts

CONTRIB_PREFIX = "contrib__"
"""Column prefix of per-feature contributions in the scores layer (`contrib__<feature>`)."""


class OnnxScorer:
    """Element scores from an ONNX graph on ONNX Runtime's CPU provider.

    Callable like `model.element_scores`, so `models.scoring.row_contributions`
    accepts it in place of a torch model.
    """

    def __init__(self, onnx_bytes: bytes, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default
        self.session = ort.InferenceSession(onnx_bytes, sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def element_scores(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, L, F) windows -> (B, L, F) float32 element scores, on the input's device."""
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        array = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else x
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(array, np.float32)})
        return torch.from_numpy(out).to(device)

    __call__ = element_scores


Scorer = WindowModel | OnnxScorer


def series_tensor(scaled: pl.DataFrame, features: list[str], device: torch.device) -> torch.Tensor:
    """The whole scaled series as one (T, F) float32 tensor on the device."""
    return torch.from_numpy(scaled.select(features).to_numpy().astype("float32")).to(device)


def raw_contributions(
    scorer: Scorer, scaled: pl.DataFrame, features: list[str], length: int,
    batch_size: int = 2048,
) -> np.ndarray:
    """(T, F) mean element score per row and feature, before per-feature normalisation.

    `scaled` is sorted by entity, timestamp; rows no full window covers are NaN.
    """
    device = scorer.device if isinstance(scorer, WindowModel) else torch.device("cpu")
    starts = window_starts(scaled["entity"].rle_id().to_numpy(), length, 1)
    windows = WindowSet(series_tensor(scaled, features, device), torch.from_numpy(starts), length)
    contrib, _ = row_contributions(scorer, windows, batch_size)
    return contrib.cpu().numpy()


def normalised(raw: np.ndarray, feature_scale: np.ndarray | list[float] | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(scores (T,), contributions (T, F)) from raw contributions and a feature scale."""
    contrib = raw if feature_scale is None else raw / np.asarray(feature_scale, dtype=np.float32)
    return contrib.sum(axis=1), contrib


def score_rows(
    scorer: Scorer, scaled: pl.DataFrame, features: list[str], length: int,
    feature_scale: np.ndarray | list[float] | None = None, batch_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (T,), contributions (T, F)) for a frame sorted by entity, timestamp.

    With `feature_scale` (each feature's mean contribution on normal training rows),
    contributions are in units of that feature's typical training error, so a
    feature that is always hard to reconstruct cannot drown out the others.
    """
    raw = raw_contributions(scorer, scaled, features, length, batch_size)
    return normalised(raw, feature_scale)


def feature_error_scale(contributions: np.ndarray) -> np.ndarray:
    """Mean contribution per feature over (normal training) rows, floored to stay positive."""
    scale = np.nanmean(contributions, axis=0).astype(np.float64)
    floor = max(float(np.nanmean(scale)) * 1e-3, 1e-12)
    return np.maximum(np.nan_to_num(scale, nan=floor), floor)
