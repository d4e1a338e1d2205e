"""Built-in synthetic multi-sensor data: the embedded default that runs anywhere.

Each entity has a few latent drivers (daily and weekly cycles, a slow trend, a
random walk); sensors are noisy linear mixes of them, so they are correlated and
an anomaly can break that correlation without leaving its normal range. Labelled
anomalies of five kinds are injected after the clean training period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import polars as pl

from schemas.config import SyntheticSource
from tasks.evaluation.injection import ANOMALY_KINDS, apply_anomaly, pick_features

# Segment lengths in rows (min, max): a stuck sensor or a broken correlation only
# shows once the other sensors have moved on, so those last hours, not minutes.
LENGTHS = {"spike": (1, 3), "level_shift": (12, 36), "variance_burst": (12, 36),
           "stuck": (72, 144), "correlation_break": (36, 72)}


@dataclass(frozen=True)
class InjectedAnomaly:
    entity: str
    kind: str
    start_row: int
    length: int
    sensors: tuple[int, ...]


def _drivers(n: int, freq_minutes: int, rng: np.random.Generator) -> np.ndarray:
    """Four latent signals per row: daily, weekly, trend, slow random walk. Shape (n, 4)."""
    minutes = np.arange(n) * freq_minutes
    day = 2 * np.pi * minutes / (24 * 60)
    week = day / 7
    phase = rng.uniform(0, 2 * np.pi, 2)
    walk = np.cumsum(rng.normal(0, 0.004, n))
    walk -= np.linspace(0, walk[-1], n)  # keep the walk bounded over the run
    return np.stack(
        [np.sin(day + phase[0]), np.sin(week + phase[1]), minutes / minutes[-1], walk], axis=1
    )


def _inject(
    x: np.ndarray, entity: str, cfg: SyntheticSource, rng: np.random.Generator
) -> tuple[np.ndarray, list[InjectedAnomaly]]:
    """Inject anomalies into rows after the clean period; returns row labels and what was done."""
    n, n_sensors = x.shape
    labels = np.zeros(n, dtype=np.int8)
    first = cfg.clean_days * 24 * 60 // cfg.freq_minutes
    done: list[InjectedAnomaly] = []
    if first >= n - 64:
        return labels, done
    slots = np.linspace(first + 16, n - 48, cfg.anomalies_per_entity + 1).astype(int)
    clean = x[:first]  # never injected: the reference of every effect
    center = np.array([clean[:, s].mean() for s in range(n_sensors)])  # as a column's own mean
    scale = clean.std(axis=0)
    for i in range(cfg.anomalies_per_entity):
        kind = ANOMALY_KINDS[i % len(ANOMALY_KINDS)]
        start = int(rng.integers(slots[i], max(slots[i] + 1, slots[i + 1] - LENGTHS[kind][1] - 8)))
        lo, hi = LENGTHS[kind]
        length = int(rng.integers(lo, hi + 1))
        sensors = pick_features(n_sensors, rng)
        seg = slice(start, start + length)
        apply_anomaly(x, kind, start, length, sensors, center, scale, rng)
        labels[seg] = 1
        done.append(InjectedAnomaly(entity, kind, start, length, sensors))
    return labels, done


def generate(cfg: SyntheticSource) -> tuple[pl.DataFrame, list[InjectedAnomaly]]:
    """A labelled multi-entity frame: timestamp, entity, s00..sNN, label. Same seed, same data."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.days * 24 * 60 // cfg.freq_minutes
    timestamps = [cfg.start + timedelta(minutes=cfg.freq_minutes * i) for i in range(n)]
    frames, injected = [], []
    for e in range(cfg.entities):
        entity = f"machine-{e:02d}"
        mixing = rng.normal(0, 1, (4, cfg.sensors)) * np.array([[3.0], [1.5], [0.3], [1.0]])
        offsets = rng.uniform(20, 80, cfg.sensors)
        x = offsets + _drivers(n, cfg.freq_minutes, rng) @ mixing
        x += rng.normal(0, 0.25, x.shape)
        labels, done = _inject(x, entity, cfg, rng)
        injected += done
        frame = pl.DataFrame({f"s{j:02d}": x[:, j].astype(np.float64) for j in range(cfg.sensors)})
        frames.append(
            frame.with_columns(
                pl.Series("timestamp", timestamps, dtype=pl.Datetime("us")),
                pl.lit(entity).alias("entity"),
                pl.Series("label", labels, dtype=pl.Int8),
            ).select(["timestamp", "entity", *frame.columns, "label"])
        )
    return pl.concat(frames), injected


def write_daily_csv(frame: pl.DataFrame, directory: str) -> list[str]:
    """One CSV per day (all entities), as a nightly feed would deliver them."""
    import os

    os.makedirs(directory, exist_ok=True)
    written = []
    by_day = frame.with_columns(pl.col("timestamp").dt.date().alias("_day"))
    for (day,), part in by_day.group_by("_day", maintain_order=True):
        path = os.path.join(directory, f"{day.isoformat()}.csv")
        part.drop("_day").sort(["entity", "timestamp"]).write_csv(path)
        written.append(path)
    return sorted(written)


def source_directory(pattern: str) -> str:
    """The folder part of a source glob such as ./data/*.csv."""
    import os

    return os.path.dirname(pattern) if any(c in pattern for c in "*?[") else pattern


def materialize(cfg: SyntheticSource, source_path: str, overwrite: bool = False) -> list[str]:
    """Write the synthetic feed where the config's source points, unless it is already there."""
    import glob

    existing = sorted(glob.glob(source_path))
    if existing and not overwrite:
        return existing
    frame, _ = generate(cfg)
    written = write_daily_csv(frame, source_directory(source_path))
    return sorted(written + write_corrupt_deliveries(frame, source_directory(source_path),
                                                     cfg.corrupt_deliveries))


def write_corrupt_deliveries(frame: pl.DataFrame, directory: str, count: int) -> list[str]:
    """Re-sent copies of the last days in which one sensor dropped out (empty cells).

    Real feeds do this; validation must quarantine them and keep the good originals.
    """
    import os

    days = sorted(frame["timestamp"].dt.date().unique())[-count:] if count else []
    written = []
    for day in days:
        part = frame.filter(pl.col("timestamp").dt.date() == day).sort(["entity", "timestamp"])
        broken = part.with_columns(
            pl.when(pl.int_range(pl.len()) % 7 == 3).then(None).otherwise(pl.col("s01")).alias("s01")
        )
        path = os.path.join(directory, f"{day.isoformat()}-resend.csv")
        broken.write_csv(path)
        written.append(path)
    return written
