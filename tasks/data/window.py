"""Window index: which windows exist, not copies of them.

A window is (entity, start_row, end_ts, label, split) over the scaled series;
the models build windows as zero-copy views of the series from `start_row`.
A window never crosses an entity boundary. Its label is 1 when any row in it is
anomalous; its split is the split its rows share, or "mixed" when they differ.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

SPLIT_CODES = {"none": 0, "train": 1, "validation": 2, "score": 3}
SPLIT_NAMES = {v: k for k, v in SPLIT_CODES.items()} | {-1: "mixed"}


def window_starts(entities: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """Start rows of all windows of `length` inside each entity's contiguous block.

    `entities` must be grouped (all rows of an entity adjacent), as the sorted frame is.
    """
    n = len(entities)
    if n < length:
        return np.empty(0, dtype=np.int64)
    boundaries = np.flatnonzero(entities[1:] != entities[:-1]) + 1
    block_start = np.zeros(n, dtype=np.int64)
    block_start[boundaries] = boundaries
    block_start = np.maximum.accumulate(block_start)
    starts = np.arange(n - length + 1)
    same_entity = entities[starts] == entities[starts + length - 1]
    on_stride = (starts - block_start[starts]) % stride == 0
    return starts[same_entity & on_stride]


def build_window_index(frame: pl.DataFrame, length: int, stride: int) -> pl.DataFrame:
    """Index of windows over a frame sorted by (entity, timestamp) with label and split columns."""
    entities = frame["entity"].rle_id().to_numpy()  # run ids: the frame is grouped by entity
    starts = window_starts(entities, length, stride)
    labels = frame["label"].to_numpy().astype(np.int8)
    splits = frame["split"].replace_strict(SPLIT_CODES, return_dtype=pl.Int8).to_numpy()
    if len(starts):
        label = sliding_window_view(labels, length).max(axis=1)[starts]
        lo = sliding_window_view(splits, length).min(axis=1)[starts]
        hi = sliding_window_view(splits, length).max(axis=1)[starts]
        split = np.where(lo == hi, lo, -1)
    else:
        label = split = np.empty(0, dtype=np.int8)
    return pl.DataFrame(
        {
            "entity": frame["entity"].gather(starts).cast(pl.String),
            "start_row": starts.astype(np.int64),
            "end_ts": frame["timestamp"].gather(starts + length - 1),
            "label": label.astype(np.int8),
            "split": pl.Series(split.astype(np.int8)).replace_strict(SPLIT_NAMES, return_dtype=pl.String),
        }
    )
