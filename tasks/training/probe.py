"""The export check's probe: a fixed sample of real validation rows, saved by training.

Why real rows: the ONNX parity check compares torch and ONNX Runtime on what users
see (row scores and verdicts at the calibrated threshold), and scores on
standard-normal noise say little about a model's scale on its own data (a
threshold in the hundreds makes 1e-3 of absolute error irrelevant, 1e-6 of
relative error on noise can be anything). The probe is up to `MAX_BLOCKS`
contiguous blocks of `BLOCK_WINDOWS` windows each, cut from the validation split
(the train split when there is none), never across an entity: half of them
around the highest-scoring rows (the anomalies and rows near the threshold,
where a verdict can flip), half evenly spaced (the normal rows). Stored as
safetensors (numpy, no pickle): `series` (R, F) scaled rows and `block` (R,)
block ids, so windows never cross two blocks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

PROBE = "probe.safetensors"
MAX_BLOCKS = 16
BLOCK_WINDOWS = 96


@dataclass(frozen=True)
class Probe:
    """Scaled rows (R, F) in blocks (R,): the rows the export check scores both ways."""

    series: np.ndarray
    block: np.ndarray
    source: str

    @property
    def rows(self) -> int:
        return len(self.block)

    def to_bytes(self) -> bytes:
        return save_arrays({"series": np.ascontiguousarray(self.series, np.float32),
                            "block": np.ascontiguousarray(self.block, np.int32)},
                           metadata={"source": self.source})

    @classmethod
    def from_bytes(cls, data: bytes) -> Probe:
        arrays = load_arrays(data)
        header_len = int.from_bytes(data[:8], "little")  # safetensors: u64 length, JSON header
        source = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}).get("source", "")
        return cls(arrays["series"], arrays["block"], source)


def block_starts(eligible: np.ndarray, group: np.ndarray, size: int) -> np.ndarray:
    """First rows p where rows p..p+size-1 are all eligible and in one group (entity)."""
    n = len(eligible)
    if n < size:
        return np.empty(0, dtype=np.int64)
    bad = np.concatenate([[0], np.cumsum(~eligible)])
    p = np.arange(n - size + 1)
    clean = bad[p + size] - bad[p] == 0
    return p[clean & (group[p] == group[p + size - 1])]


def choose_blocks(starts: np.ndarray, scores: np.ndarray, size: int, n_blocks: int
                  ) -> list[int]:
    """Half the blocks at the highest row scores, half evenly spaced; never overlapping."""
    chosen: list[int] = []

    def take(start: int) -> None:
        if len(chosen) < n_blocks and all(abs(start - c) >= size for c in chosen):
            chosen.append(int(start))

    finite = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf)
    block_score = np.lib.stride_tricks.sliding_window_view(finite, size).max(axis=1)[starts]
    for i in np.argsort(-block_score, kind="stable"):
        if len(chosen) >= n_blocks // 2:
            break
        take(starts[i])
    for i in np.linspace(0, len(starts) - 1, num=4 * n_blocks).round().astype(int):
        take(starts[i])
    return sorted(chosen)


def select_probe(scaled: pl.DataFrame, scores: np.ndarray, features: list[str], length: int,
                 n_blocks: int = MAX_BLOCKS) -> Probe | None:
    """The probe of a prepared frame (sorted by entity, timestamp) and its torch row scores;
    None when no split holds one block."""
    size = length + BLOCK_WINDOWS - 1
    group = scaled["entity"].rle_id().to_numpy()
    split = scaled["split"].to_numpy()
    for source in ("validation", "train"):
        starts = block_starts(split == source, group, size)
        if len(starts):
            break
    else:
        return None
    chosen = choose_blocks(starts, scores, size, n_blocks)
    rows = np.concatenate([np.arange(s, s + size) for s in chosen])
    series = scaled.select(features).to_numpy().astype(np.float32)[rows]
    block = np.repeat(np.arange(len(chosen), dtype=np.int32), size)
    return Probe(series, block, f"{source} rows")
