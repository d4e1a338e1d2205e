"""The dev series of issue 10 as plain arrays, split exactly as the pipeline splits them.

Why a module of its own: the dev benchmark (benchmarks/dev_benchmark.py) must see the same
rows, labels and train / validation / score cut as `nightowl benchmark` (the
loaders in tasks/data/public_data.py with `choose_boundary`), but they do not need the
pipeline's store, Great Expectations or Parquet round trips for every arm. Each
series is written once by its loader into a temporary folder, read back sorted
like the pipeline reads it, and tagged by `tasks.data.prepare.assign_splits`.

Scaling is fitted on train rows only with the pipeline's own `fit_scaler`
(robust / standard / minmax), or left as shipped ("none").
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED_DATA  # noqa: E402
from tasks.data import public_data as loaders  # noqa: E402
from tasks.data.prepare import assign_splits  # noqa: E402
from tasks.data.scale import fit_scaler  # noqa: E402

SCALINGS = ("none", "standard", "robust", "minmax")
ASD_NAMES = tuple(f"omi-{k}" for k in range(1, 7))
NAB_NAMES = (
    "realAWSCloudwatch/ec2_cpu_utilization_825cc2",
    "realKnownCause/machine_temperature_system_failure",
    "realKnownCause/nyc_taxi",
)
NAB_WINDOW = 32  # what benchmarks/RESULTS.md used for NAB (`--window 32`)


@dataclass
class Series:
    """One series (or table) as raw rows, labels and the pipeline's split of every row."""

    kind: str  # smd | asd | nab | odds ("asd" is read by the SMD loader)
    name: str
    x: np.ndarray  # (T, F) float64, as shipped
    labels: np.ndarray  # (T,) int8
    split: np.ndarray  # (T,) str: train / validation / score
    window: int  # the pipeline's default window for this kind (1 = rows of a table)
    normal_train_only: bool = True

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name.split('/')[-1]}"

    @property
    def is_table(self) -> bool:
        return self.window == 1

    def mask(self, split: str) -> np.ndarray:
        return self.split == split

    def scaled(self, method: str) -> np.ndarray:
        """float32 rows scaled by `method` fitted on train rows only ("none": as shipped)."""
        if method == "none":
            return self.x.astype(np.float32)
        feats = [f"f{j}" for j in range(self.x.shape[1])]
        train = pl.DataFrame(self.x[self.mask("train")], schema=feats, orient="row")
        params = fit_scaler(train, feats, method)
        center = np.asarray(params.center, dtype=np.float64)
        scale = np.asarray(params.scale, dtype=np.float64)
        return ((self.x - center) / scale).astype(np.float32)


def _read(cfg, kind: str, name: str, window: int) -> Series:
    frame = pl.read_parquet(cfg.source.path).sort(["entity", "timestamp"])
    frame = assign_splits(frame, cfg.splits)
    feats = cfg.columns.features
    split = frame["split"].to_numpy().astype(str)
    if (split == "none").any():
        raise ValueError(f"{kind} {name}: {int((split == 'none').sum())} rows outside every split")
    return Series(kind, name, frame.select(feats).to_numpy().astype(np.float64),
                  frame["label"].to_numpy().astype(np.int8), split, window,
                  cfg.splits.train_on_normal_only)


def load_series(kind: str, name: str, work_dir: Path | None = None) -> Series:
    """One dev series through its pipeline loader (the same split as `nightowl benchmark`)."""
    with tempfile.TemporaryDirectory(prefix="dev-series-") as tmp:
        out = Path(work_dir or tmp) / kind
        if kind == "smd":
            cfg, _ = loaders.load_smd(SHARED_DATA / "smd", name, out)
            return _read(cfg, kind, name, cfg.window.length)
        if kind == "asd":
            cfg, _ = loaders.load_smd(SHARED_DATA / "asd", name, out)
            return _read(cfg, kind, name, cfg.window.length)
        if kind == "nab":
            cfg, _ = loaders.load_nab(SHARED_DATA / "nab", name, out)
            return _read(cfg, kind, name, NAB_WINDOW)
        if kind == "odds":
            cfg, _ = loaders.load_odds(SHARED_DATA / "tabular", name, out)
            return _read(cfg, kind, name, 1)
    raise ValueError(f"unknown kind {kind!r}")


DEV_SERIES: tuple[tuple[str, str], ...] = (
    ("smd", "machine-2-1"),
    *(("asd", n) for n in ASD_NAMES),
    *(("nab", n) for n in NAB_NAMES),
    ("odds", "cardio"),
)


def describe(s: Series) -> str:
    parts = []
    for sp in ("train", "validation", "score"):
        m = s.mask(sp)
        lab = s.labels[m]
        n_seg = int(np.sum(np.diff(np.concatenate(([0], lab, [0]))) == 1))
        parts.append(f"{sp} {int(m.sum())} rows / {int(lab.sum())} pos / {n_seg} events")
    return f"{s.key}: F={s.x.shape[1]}, " + "; ".join(parts)


if __name__ == "__main__":
    for kind, name in DEV_SERIES:
        print(describe(load_series(kind, name)))
