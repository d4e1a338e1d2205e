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


def test_the_runtime_group_is_no_setting() -> None:
    """`group` is set by the fan-out (`for_group`), never read from or written to a config."""
    data = demo_dict()
    with pytest.raises(ConfigError, match="group"):
        parse_config({**data, "group": "machine-01"})
    cfg = parse_config(data)
    narrowed = cfg.for_group("machine-01")
    assert (cfg.group, narrowed.group, narrowed.label) == (None, "machine-01", "synthetic[machine-01]")
    assert "group" not in narrowed.model_dump() and narrowed.model_dump() == cfg.model_dump()
    assert narrowed != cfg and narrowed.for_group(None) == cfg


def test_explain_lists_what_to_set_and_every_default_from_the_schema() -> None:
    from typer.testing import CliRunner

    from flows.cli import app
    from schemas.explain import settings

    leaves = {s.path: s for s in settings()}
    assert {p for p, s in leaves.items() if s.required and not s.section_optional} == {
        "name", "source.path", "columns.features", "splits.train.start", "splits.train.end",
        "splits.validation[].start", "splits.validation[].end", "families[].name"}
    assert leaves["window.length"].default == 16 and leaves["training.epochs"].default == 5
    assert leaves["splits.score.start"].section_optional  # needed only with a score split
    result = CliRunner().invoke(app, ["check-config", "--explain", str(default_config_path())])
    assert result.exit_code == 0, result.output
    assert "  name: str" in result.output and "  window.length: int = 16" in result.output
    assert result.output.splitlines()[-1].startswith("ok: dataset 'synthetic'")
