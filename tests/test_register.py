"""Versions are immutable and verified; the champion pointer moves atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.store import Store
from tasks.versions import (
    ChampionConflict,
    IntegrityError,
    VersionRef,
    load_version_files,
    read_champion,
    register_version,
    set_champion,
    version_id,
)

FILES = {"weights.safetensors": b"\x00\x01weights", "config.json": b'{"a": 1}'}


def test_version_is_content_addressed_and_idempotent(store: Store) -> None:
    ref = register_version(store, "ds", "dense_ae", FILES)
    assert ref == register_version(store, "ds", "dense_ae", dict(FILES))
    assert ref.version == version_id({n: __import__("hashlib").sha256(d).hexdigest()
                                      for n, d in FILES.items()})
    other = register_version(store, "ds", "dense_ae", {**FILES, "config.json": b'{"a": 2}'})
    assert other.version != ref.version
    assert load_version_files(store, ref) == FILES


def test_flipped_byte_in_weights_is_refused(store: Store) -> None:
    ref = register_version(store, "ds", "dense_ae", FILES)
    path = Path(store.path(f"{ref.key}/weights.safetensors"))
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="weights.safetensors: sha256 mismatch"):
        load_version_files(store, ref)


def test_tampered_manifest_and_incomplete_version_are_refused(store: Store) -> None:
    ref = register_version(store, "ds", "dense_ae", FILES)
    manifest = store.read_json(f"{ref.key}/MANIFEST.json")
    manifest["files"]["config.json"]["sha256"] = "0" * 64
    store.write_json(f"{ref.key}/MANIFEST.json", manifest)
    with pytest.raises(IntegrityError, match="does not hash to version"):
        load_version_files(store, ref)
    with pytest.raises(IntegrityError, match="never completed"):
        load_version_files(store, VersionRef("ds", "dense_ae", "feedfacefeedface"))


def test_champion_pointer_generation_guards_concurrent_updates(store: Store) -> None:
    a = register_version(store, "ds", "dense_ae", FILES)
    b = register_version(store, "ds", "dense_ae", {**FILES, "config.json": b"{}"})
    first = set_champion(store, a, "pr_auc", 0.5)
    assert first["generation"] == 1 and first["previous"] is None
    second = set_champion(store, b, "pr_auc", 0.6, expected_generation=1)
    assert second["previous"] == {"family": "dense_ae", "version": a.version}
    with pytest.raises(ChampionConflict, match="generation is 2, expected 1"):
        set_champion(store, a, "pr_auc", 0.7, expected_generation=1)
    assert read_champion(store, "ds")["version"] == b.version
