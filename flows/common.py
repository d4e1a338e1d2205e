"""What every flow needs first: the typed config (the embedded demo config by default)."""

from __future__ import annotations

from schemas.config import DatasetConfig, default_config_path, load_config


def resolve_config(config: str | None) -> DatasetConfig:
    """Load a config file path; None means the embedded synthetic demo."""
    return load_config(config or default_config_path())
