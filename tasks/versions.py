"""Immutable, content-addressed model versions, the champion pointer, and loading a model.

Layout: models/<ds>/<family>/<version>/{files..., MANIFEST.json}. The version id
is derived from the sha256 of every file, MANIFEST.json is written last (a
version without one does not exist), and loading re-hashes every file and
refuses any mismatch. Shared by training (registers, promotes) and nightly
scoring (loads the champion); files are safetensors and JSON, never pickle.
torch is imported only where a torch model is built or saved: a scoring worker
without torch loads a version's scaler, threshold and ONNX graph from here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas.config import LEGACY_ROW_RULE, RowRule
from tasks.data.scale import ScalerParams
from tasks.store import ContendedError, Store, sha256_bytes

if TYPE_CHECKING:
    import torch

    from models.base import WindowModel

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
WEIGHTS, CONFIG, SCALER, THRESHOLD, METRICS, ONNX, DRIFT_REFERENCE, REPORT = (
    "weights.safetensors", "config.json", "scaler.json", "threshold.json", "metrics.json",
    "model.onnx", "drift_reference.json", "report.md",
)
ENSEMBLE = "ensemble"
"""The family name of ensemble versions: config.json lists member versions, no weights."""


class IntegrityError(RuntimeError):
    """A stored artifact does not match its manifest."""


RECENT_WRITES = 16  # write ids a champion pointer remembers (a lost reply is recognised)


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


def register_version(store: Store, dataset: str, family: str, files: dict[str, bytes],
                     members: list[dict[str, Any]] | None = None) -> VersionRef:
    """Write every file, then MANIFEST.json last; an existing identical version is reused.
    An ensemble's `members` (version refs with their manifest sha256) are listed in it too:
    config.json, hashed like every file, holds the same list that loading checks."""
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
        **({"members": members} if members is not None else {}),
    }
    store.write_json(f"{ref.key}/{MANIFEST}", manifest)
    return ref


def has_file(store: Store, ref: VersionRef, name: str) -> bool:
    """Whether a version's manifest lists `name` (older versions may lack optional files)."""
    return name in read_manifest(store, ref)["files"]


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
    """Replace the pointer by compare-and-swap (`Store.update_json`: S3 conditional PUT, local
    file lock).

    With `expected_generation`, refuse if it moved; without it, re-read and retry
    when another writer won the race, so no registration is ever lost. Each call has
    a write id that the pointer remembers (with the last few before it): a PUT that
    landed although its reply was lost (a reset connection) is recognised on the retry
    even if another promotion followed it, so it is never applied twice.
    """
    key = champion_key(ref.dataset)
    write_id = uuid.uuid4().hex
    pointer: dict[str, Any] = {}

    def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
        nonlocal pointer
        if current is not None and write_id in current.get("writes", []):
            return current  # our earlier attempt is in place (or was, before a later one)
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
            "writes": [write_id, *(current or {}).get("writes", [])][:RECENT_WRITES],
        }
        return pointer

    try:
        store.update_json(key, change, max_attempts=max_attempts)
    except ContendedError as err:
        raise ChampionConflict(str(err)) from None
    return pointer


# -- models in and out of versions --------------------------------------------------------


def weights_bytes(model: WindowModel) -> bytes:
    from safetensors.torch import save as save_safetensors

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(state)


def model_from_bytes(arguments: dict[str, Any], weights: bytes, device: torch.device) -> WindowModel:
    """Rebuild a family from its stored arguments and load its weights."""
    from safetensors.torch import load as load_safetensors

    from models.registry import build_model

    model = build_model(arguments["family"], arguments["n_features"], arguments["window"],
                        arguments["params"])
    model.load_state_dict(load_safetensors(weights))
    return model.to(device).eval()


@dataclass
class LoadedModel:
    """A verified version ready to score: scaler, calibrated threshold and (unless it is
    scored through its ONNX graph) the torch model; an ensemble has no model of its own but
    its verified members, each with its weight."""

    ref: VersionRef
    model: WindowModel | None
    scaler: ScalerParams
    threshold: dict[str, Any]
    config: dict[str, Any]
    members: list[tuple[LoadedModel, float]] = field(default_factory=list)

    @property
    def is_ensemble(self) -> bool:
        return "ensemble" in self.config

    @property
    def features(self) -> list[str]:
        return self.scaler.features

    @property
    def window(self) -> int:
        return int(self.config["model"]["window"])

    @property
    def feature_scale(self) -> list[float] | None:
        return self.threshold.get("feature_scale")

    @property
    def row_rule(self) -> RowRule:
        """The row rule the version was trained and calibrated under (config.json `window`);
        versions registered before the rule was recorded used "mean_elem"."""
        return row_rule_of(self.config)


def row_rule_of(config: dict[str, Any]) -> RowRule:
    """The row rule in a version's config.json; "mean_elem" for versions that predate the field."""
    return config.get("window", {}).get("row_rule", LEGACY_ROW_RULE)


def load_model(store: Store, ref: VersionRef, device: torch.device | None) -> LoadedModel:
    """Load a registered version; every file's sha256 is checked first. With `device`
    None the torch model is not built (no torch needed: scoring through model.onnx).
    An ensemble's members are loaded too, each checked against the manifest hash the
    ensemble recorded."""
    config = json.loads(load_version_files(store, ref, [CONFIG])[CONFIG])
    is_ensemble = "ensemble" in config
    names = [SCALER, THRESHOLD] + ([WEIGHTS] if device is not None and not is_ensemble else [])
    files = load_version_files(store, ref, names)
    return LoadedModel(
        ref=ref,
        model=(None if device is None or is_ensemble
               else model_from_bytes(config["model"], files[WEIGHTS], device)),
        scaler=ScalerParams.from_json(json.loads(files[SCALER])),
        threshold=json.loads(files[THRESHOLD]),
        config=config,
        members=([(load_member(store, ref, m, device), float(m["weight"]))
                  for m in config["ensemble"]["members"]] if is_ensemble else []),
    )


def member_ref(member: dict[str, Any]) -> VersionRef:
    return VersionRef(member["dataset"], member["family"], member["version"])


def verify_member(store: Store, ensemble: VersionRef, member: dict[str, Any]) -> VersionRef:
    """The member's ref, once its MANIFEST.json hashes to what the ensemble recorded."""
    ref = member_ref(member)
    key = f"{ref.key}/{MANIFEST}"
    if not store.exists(key):
        raise IntegrityError(f"ensemble {store.uri(ensemble.key)}: member {store.uri(ref.key)} "
                             f"has no manifest (deleted or never completed); refusing to load")
    digest = sha256_bytes(store.read_bytes(key))
    if digest != member["manifest_sha256"]:
        raise IntegrityError(
            f"ensemble {store.uri(ensemble.key)}: member {store.uri(key)} sha256 mismatch, "
            f"refusing to load (recorded {member['manifest_sha256'][:12]}…, got {digest[:12]}…)")
    return ref


def load_member(store: Store, ensemble: VersionRef, member: dict[str, Any],
                device: torch.device | None) -> LoadedModel:
    """One verified member of an ensemble (its manifest hash, then its own files)."""
    ref = verify_member(store, ensemble, member)
    try:
        return load_model(store, ref, device)
    except IntegrityError as err:
        raise IntegrityError(f"ensemble {store.uri(ensemble.key)}: member refused: {err}") from err


def current_champion(store: Store, dataset: str) -> VersionRef:
    """The version the champion pointer names; LookupError before the first training."""
    pointer = read_champion(store, dataset)
    if pointer is None:
        raise LookupError(f"no champion for dataset {dataset!r}: run training first")
    return champion_ref(pointer)


def load_champion(store: Store, dataset: str, device: torch.device | None) -> LoadedModel:
    """The verified champion of a dataset; LookupError before the first training."""
    return load_model(store, current_champion(store, dataset), device)


def export_outcome(store: Store, ref: VersionRef) -> dict[str, Any] | None:
    """The ONNX export outcome recorded in a version's metrics.json (None: not recorded)."""
    metrics = json.loads(load_version_files(store, ref, [METRICS])[METRICS])
    return metrics.get("export")
