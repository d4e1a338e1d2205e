"""A tiny synthetic dataset config for nightly-operation tests: 1 machine, 3 sensors, 6 days.

Days 0-2 train, day 3 validation, days 4-5 are "nights"; 30-minute samples keep
every stage under a second or two.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

START = datetime(2026, 1, 5)
NIGHTS = [date(2026, 1, 9), date(2026, 1, 10)]


def day(i: int) -> str:
    return (START + timedelta(days=i)).isoformat()


def tiny_config(root: Path, store_root: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The config mapping (write it with `write_config` for flows that take a path)."""
    data: dict[str, Any] = {
        "name": "tiny",
        "source": {"path": str(root / "raw" / "*.csv"), "format": "csv",
                   "synthetic": {"entities": 1, "sensors": 3, "days": 6, "freq_minutes": 30,
                                 "anomalies_per_entity": 3, "seed": 3, "start": START,
                                 "clean_days": 3}},
        "columns": {"features": ["s00", "s01", "s02"]},
        "window": {"length": 4, "stride": 1},
        "splits": {"train": {"start": day(0), "end": day(3)},
                   "validation": [{"start": day(3), "end": day(5)}],
                   "score": {"start": day(4), "end": day(6)}},
        "families": [{"name": "dense_ae", "params": {"hidden": [8], "latent": 2}}],
        "training": {"epochs": 2, "batch_size": 64, "patience": 1, "device": "cpu"},
        "threshold": {"method": "percentile", "percentile": 95.0},
        "store": {"root": store_root or f"file://{root / 'store'}"},
        "retrain": {"train_days": 3, "validation_days": 2},
        "drift": {"cooldown_hours": 0.0},
    }
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return data


def write_config(root: Path, data: dict[str, Any]) -> str:
    """TOML on disk, so flows get a path exactly as the CLI and deployments pass one."""
    lines = []
    def emit(prefix: str, obj: dict[str, Any]) -> None:
        scalars = {k: v for k, v in obj.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml(v)}")
        for k, v in obj.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{k}" if prefix else k, v)
    emit("", data)
    path = root / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
