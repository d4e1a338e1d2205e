"""Names that become store keys: patterns hold to the end of the string, and no name can
take another's key (an entity literally named like a hash is not that hash's entity)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from schemas.config import ConfigError, parse_config, scope_slug
from tasks.nightly.score import shards_of
from tasks.store import UnsafeKeyError, safe_component
from tests.tiny import tiny_config


def hashed(name: str) -> str:
    return "h-" + hashlib.sha256(name.encode()).hexdigest()[:16]


@pytest.mark.parametrize("value", ["abc\n", "abc\r\n", "20260101T000000Z\n", "a\nb"])
def test_a_trailing_or_inner_newline_is_not_a_safe_component(value: str) -> None:
    with pytest.raises(UnsafeKeyError, match="run id"):
        safe_component(value, "run id")


def test_the_cli_refuses_a_run_id_with_a_trailing_newline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--run-id", "20260101T000000Z\n"])
    assert result.exit_code == 2 and "--run-id" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["m1\n", "m1\r", "a\n\n"])
def test_a_name_with_a_newline_is_hashed_not_kept(name: str) -> None:
    assert scope_slug(name) == hashed(name)


def test_a_name_shaped_like_a_hash_cannot_take_the_hashed_names_key() -> None:
    """'machine/7' hashes to h-<16 hex>; an entity literally named that must get other keys."""
    unsafe = "machine/7"
    lookalike = hashed(unsafe)
    assert scope_slug(unsafe) == lookalike
    assert scope_slug(lookalike) == hashed(lookalike) != lookalike
    cfg = parse_config(tiny_config(Path("/tmp/x"), model={"scope": "entity"}))
    assert cfg.for_group(unsafe).scope_name != cfg.for_group(lookalike).scope_name
    assert {s.part for s in shards_of(unsafe, {unsafe: 1}, 10)}.isdisjoint(
        s.part for s in shards_of(lookalike, {lookalike: 1}, 10))


@pytest.mark.parametrize("name", ["m1", "machine-1_a.b", "h-12345", "h-0123456789ABCDEF",
                                  "h-0123456789abcdef0", "x" * 64])
def test_safe_names_that_are_not_hash_shaped_stay_readable(name: str) -> None:
    assert scope_slug(name) == name


def test_a_dataset_name_with_a_trailing_newline_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="field 'name'"):
        parse_config({**tiny_config(Path("/tmp/x")), "name": "tiny\n"})
