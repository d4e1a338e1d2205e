"""Immutable, content-addressed model versions and an atomically replaced champion pointer.

Layout: models/<ds>/<family>/<version>/{files..., MANIFEST.json}. The version id
is derived from the sha256 of every file, MANIFEST.json is written last (a
version without one does not exist), and loading re-hashes every file and
refuses any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.store import Store, json_bytes, sha256_bytes

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"


class IntegrityError(RuntimeError):
    """A stored artifact does not match its manifest."""


class ChampionConflict(RuntimeError):
    """The champion pointer changed between read and write."""


@dataclass(frozen=True)
class VersionRef:
    dataset: str
    family: str
    version: str

    @property
    def key(self) -> str:
        return f"models/{self.dataset}/{self.family}/{self.version}"

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def version_id(file_hashes: dict[str, str]) -> str:
    """Content address: the same files always give the same version."""
    lines = "\n".join(f"{name}:{digest}" for name, digest in sorted(file_hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def register_version(store: Store, dataset: str, family: str, files: dict[str, bytes]) -> VersionRef:
    """Write every file, then MANIFEST.json last; an existing identical version is reused."""
    hashes = {name: sha256_bytes(data) for name, data in files.items()}
    ref = VersionRef(dataset, family, version_id(hashes))
    if store.exists(f"{ref.key}/{MANIFEST}"):
        log.info("version %s already registered; reusing it", ref.key)
        return ref
    for name, data in files.items():
        store.write_bytes(f"{ref.key}/{name}", data)
    manifest = {
        "dataset": dataset,
        "family": family,
        "version": ref.version,
        "created_at": datetime.now(UTC).isoformat(),
        "files": {name: {"sha256": hashes[name], "bytes": len(files[name])} for name in files},
    }
    store.write_json(f"{ref.key}/{MANIFEST}", manifest)
    return ref


def read_manifest(store: Store, ref: VersionRef) -> dict[str, Any]:
    key = f"{ref.key}/{MANIFEST}"
    if not store.exists(key):
        raise IntegrityError(f"{store.uri(key)}: no manifest; the version was never completed")
    return store.read_json(key)


def load_version_files(store: Store, ref: VersionRef, names: list[str] | None = None) -> dict[str, bytes]:
    """Read files of a version, verifying each sha256 and the content address itself."""
    manifest = read_manifest(store, ref)
    entries = manifest["files"]
    if version_id({n: e["sha256"] for n, e in entries.items()}) != ref.version:
        raise IntegrityError(f"{store.uri(ref.key)}: manifest does not hash to version {ref.version}")
    out = {}
    for name in names or list(entries):
        if name not in entries:
            raise IntegrityError(f"{store.uri(ref.key)}: {name} is not in the manifest")
        data = store.read_bytes(f"{ref.key}/{name}")
        if sha256_bytes(data) != entries[name]["sha256"]:
            raise IntegrityError(
                f"{store.uri(ref.key + '/' + name)}: sha256 mismatch, refusing to load "
                f"(expected {entries[name]['sha256'][:12]}…, got {sha256_bytes(data)[:12]}…)"
            )
        out[name] = data
    return out


def champion_key(dataset: str) -> str:
    return f"models/{dataset}/CHAMPION.json"


def read_champion(store: Store, dataset: str) -> dict[str, Any] | None:
    key = champion_key(dataset)
    return store.read_json(key) if store.exists(key) else None


def champion_ref(pointer: dict[str, Any]) -> VersionRef:
    return VersionRef(pointer["dataset"], pointer["family"], pointer["version"])


def set_champion(
    store: Store,
    ref: VersionRef,
    metric: str,
    value: float,
    expected_generation: int | None = None,
    details: dict[str, Any] | None = None,
    max_attempts: int = 20,
) -> dict[str, Any]:
    """Replace the pointer by compare-and-swap (S3: conditional PUT; local: file lock).

    With `expected_generation`, refuse if it moved; without it, re-read and retry
    when another writer won the race, so no registration is ever lost.
    """
    key = champion_key(ref.dataset)
    for _ in range(max_attempts):
        data, tag = store.read_tagged(key)
        current = json.loads(data) if data is not None else None
        generation = current["generation"] if current else 0
        if expected_generation is not None and generation != expected_generation:
            raise ChampionConflict(
                f"{store.uri(key)}: generation is {generation}, expected {expected_generation}"
            )
        pointer = {
            **ref.to_json(),
            "metric": metric,
            "value": value,
            "generation": generation + 1,
            "previous": {k: current[k] for k in ("family", "version")} if current else None,
            "updated_at": datetime.now(UTC).isoformat(),
            **(details or {}),
        }
        if store.write_if(key, json_bytes(pointer), tag):
            return pointer
        log.info("champion pointer %s changed while writing; re-reading", store.uri(key))
    raise ChampionConflict(f"{store.uri(key)}: still contended after {max_attempts} attempts")


# -- Prefect stage -------------------------------------------------------------------------
@task(name="register", cache_policy=NO_CACHE, **IO_RETRIES)
def register_candidate(
    cfg: DatasetConfig, scaler_key: str, candidate: str, evaluation: dict[str, Any]
) -> VersionRef:
    """Turn a calibrated candidate into an immutable version (MANIFEST written last)."""
    store = store_for(cfg)
    fit = evaluation["fit"]
    files = {
        "weights.safetensors": store.read_bytes(f"{candidate}/weights.safetensors"),
        "config.json": json_bytes({
            "dataset": cfg.name,
            "model": fit["arguments"],
            "training": fit["settings"],
            "window": cfg.window.model_dump(),
            "columns": cfg.columns.model_dump(),
            "scaling": cfg.scaling.model_dump(),
        }),
        "scaler.json": store.read_bytes(scaler_key),
        "threshold.json": json_bytes(evaluation["threshold"]),
        "metrics.json": json_bytes({"validation": evaluation["metrics"],
                               "fit": {k: v for k, v in fit.items() if k != "arguments"}}),
        **evaluation.get("extra_files", {}),
    }
    ref = register_version(store, cfg.name, fit["family"], files)
    run_logger(__name__).info("registered %s", store.uri(ref.key))
    return ref


@task(name="choose-champion", cache_policy=NO_CACHE, **IO_RETRIES)
def choose_champion(
    cfg: DatasetConfig, candidates: list[tuple[VersionRef, dict[str, float]]]
) -> dict[str, Any]:
    """Best candidate by the configured metric becomes champion; NaN metrics never win."""
    metric = cfg.selection.metric
    scored = [(m.get(metric, float("nan")), ref) for ref, m in candidates]
    valid = [(v, ref) for v, ref in scored if v == v]
    if not valid:
        raise ValueError(f"no candidate has a defined {metric}; cannot choose a champion")
    value, best = max(valid, key=lambda pair: pair[0])
    pointer = set_champion(
        store_for(cfg), best, metric, float(value),
        details={"candidates": {ref.family: {"version": ref.version, metric: v, "metrics": dict(m)}
                                for (v, ref), (_, m) in zip(scored, candidates)}},
    )
    run_logger(__name__).info("champion of %s: %s/%s (%s=%.4f)", cfg.name, best.family,
                              best.version, metric, value)
    return pointer
