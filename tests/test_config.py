"""Typed configuration: the demo config loads; a bad config names the field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from schemas.config import ConfigError, default_config_path, load_config, parse_config


def demo_dict() -> dict:
    return tomllib.loads(default_config_path().read_text())


def test_demo_config_loads() -> None:
    cfg = load_config(default_config_path())
    assert cfg.name == "synthetic" and len(cfg.columns.features) == 12
    assert cfg.threshold.method == "target_fpr"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["window"].update(length=0), "window.length"),
        (lambda d: d["scaling"].update(method="zscore"), "scaling.method"),
        (lambda d: d["threshold"].update(target_fpr=1.5), "threshold.target_fpr"),
        (lambda d: d.update(unknown_section={}), "unknown_section"),
        (lambda d: d["columns"].update(features=[]), "columns.features"),
        (lambda d: d["splits"]["train"].update(end=d["splits"]["train"]["start"]), "splits.train"),
    ],
)
def test_bad_config_names_the_field(mutate, field: str) -> None:
    data = demo_dict()
    mutate(data)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(data, origin="bad.toml")


def test_missing_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)


def test_unknown_family_lists_available_ones() -> None:
    from models.registry import build_model, get_family

    with pytest.raises(KeyError, match="available: .*dense_ae"):
        get_family("no_such_family")
    with pytest.raises(ValueError, match="latent"):
        build_model("dense_ae", 3, 4, {"latent": -1})


def test_without_a_training_section_the_benchmarked_budget_is_used() -> None:
    """RESULTS.md measured `--epochs 5 --max-train-windows 5000`; a config that says nothing
    and `nightowl benchmark` without flags both get exactly that."""
    from flows.benchmark import BenchmarkOptions, benchmark_config

    data = demo_dict()
    del data["training"]
    cfg = parse_config(data)
    assert (cfg.training.epochs, cfg.training.max_train_windows) == (5, 5000)
    bench = benchmark_config(cfg, BenchmarkOptions())
    assert (bench.training.epochs, bench.training.max_train_windows) == (5, 5000)
