"""Turning a trained model into version files and back (safetensors + JSON, never pickle)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.base import WindowModel
from models.registry import build_model
from tasks.register import VersionRef, load_version_files
from tasks.scale import ScalerParams
from tasks.store import Store

WEIGHTS, CONFIG, SCALER, THRESHOLD, METRICS, ONNX = (
    "weights.safetensors", "config.json", "scaler.json", "threshold.json", "metrics.json",
    "model.onnx",
)


def weights_bytes(model: WindowModel) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(state)


def model_from_bytes(arguments: dict[str, Any], weights: bytes, device: torch.device) -> WindowModel:
    """Rebuild a family from its stored arguments and load its weights."""
    model = build_model(arguments["family"], arguments["n_features"], arguments["window"],
                        arguments["params"])
    model.load_state_dict(load_safetensors(weights))
    return model.to(device).eval()


@dataclass
class LoadedModel:
    ref: VersionRef
    model: WindowModel
    scaler: ScalerParams
    threshold: dict[str, Any]
    config: dict[str, Any]

    @property
    def features(self) -> list[str]:
        return self.scaler.features

    @property
    def window(self) -> int:
        return int(self.config["model"]["window"])


def load_model(store: Store, ref: VersionRef, device: torch.device) -> LoadedModel:
    """Load a registered version; every file's sha256 is checked first."""
    files = load_version_files(store, ref, [WEIGHTS, CONFIG, SCALER, THRESHOLD])
    config = json.loads(files[CONFIG])
    return LoadedModel(
        ref=ref,
        model=model_from_bytes(config["model"], files[WEIGHTS], device),
        scaler=ScalerParams.from_json(json.loads(files[SCALER])),
        threshold=json.loads(files[THRESHOLD]),
        config=config,
    )
