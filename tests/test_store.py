"""The store: atomic writes, listing, and no temporary files left for readers."""

from __future__ import annotations

import pyarrow as pa

from tasks.store import Store, sha256_bytes


def test_write_read_roundtrip_and_listing(store: Store) -> None:
    digest = store.write_bytes("a/b/c.bin", b"hello")
    assert digest == sha256_bytes(b"hello")
    assert store.read_bytes("a/b/c.bin") == b"hello"
    store.write_json("a/x.json", {"k": [1, 2]})
    assert store.read_json("a/x.json") == {"k": [1, 2]}
    table = pa.table({"v": [1.0, 2.0]})
    store.write_parquet("a/t.parquet", table)
    assert store.read_parquet("a/t.parquet").equals(table)
    assert store.list("a") == ["a/b/c.bin", "a/t.parquet", "a/x.json"]
    assert store.list_dirs("a") == ["b"]
    assert store.list("missing") == []


def test_overwrite_is_atomic_and_leaves_no_temporary_files(store: Store, tmp_path) -> None:
    store.write_bytes("k.bin", b"old")
    store.write_bytes("k.bin", b"new")
    assert store.read_bytes("k.bin") == b"new"
    leftovers = [p.name for p in (tmp_path / "store").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_uri_and_repr_name_the_location_only(store: Store, tmp_path) -> None:
    assert store.uri("x/y").startswith("file://") and store.uri("x/y").endswith("/store/x/y")
    assert "secret" not in repr(Store(f"file://{tmp_path}/s", {"key": "secret"}))
