"""Export stage: a family's element scores as an ONNX graph, checked against torch.

Why: a version carries `model.onnx` beside its safetensors weights so scoring can
run without torch (ONNX Runtime, CPU), and the file is checked against torch at
export time so a silently wrong export never reaches a version. The graph maps
windows (B, L, F) to element scores (B, L, F), B dynamic; legacy TorchScript-based
exporter (`dynamo=False`), ONNX opset 17. Scoring through the graph is
tasks.scoring.OnnxScorer.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.base import WindowModel
from models.registry import build_model
from schemas.config import DatasetConfig
from tasks.common import compute_device, process_lock, run_logger, store_for
from tasks.scoring import OnnxScorer
from tasks.training.train import FIT, TrainedCandidate
from tasks.versions import ONNX, WEIGHTS, model_from_bytes

OPSET = 17
EXPORT = "export.json"
PARITY_TOLERANCE = 1e-4
INPUT, OUTPUT = "windows", "element_scores"
EXPORTER = "onnx-export"
"""torch.onnx.export keeps process-global state (GLOBALS.in_onnx_export): two exports in
threads of one process fail each other ("GLOBALS.in_onnx_export must be True"), seen when
a fleet's candidates were exported on Prefect's thread pool."""


def export_onnx(model: WindowModel) -> bytes:
    """Serialise `model.export_module()` (windows -> element scores) as ONNX bytes."""
    module = cpu_copy(model).export_module().eval()  # never move or mutate the caller's model
    example = torch.zeros(2, model.window, model.n_features)  # 2, not 1: no size-1 broadcasts baked in
    buffer = io.BytesIO()
    # Traced with grad enabled on purpose: under no_grad, eval-mode TransformerEncoderLayer
    # takes its fused fast path (aten::_transformer_encoder_layer_fwd), which ONNX lacks.
    with process_lock(EXPORTER), warnings.catch_warnings():  # tracer notes on shape checks; parity is what counts
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The LSTM exporter warns about any dynamic batch; its zero initial states are built
        # from the input's batch size, and tests score batches of 1 and 1,000 through it.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size")
        torch.onnx.export(
            module, (example,), buffer, dynamo=False, opset_version=OPSET,
            input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    return buffer.getvalue()


def cpu_copy(model: WindowModel) -> WindowModel:
    """A fresh CPU instance with the same weights, rebuilt from the family's arguments
    (deepcopy breaks on parametrized modules such as spectral norm)."""
    args = model.arguments()
    clone = build_model(args["family"], args["n_features"], args["window"], args["params"])
    clone.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return clone.eval()


@torch.no_grad()
def parity(model: WindowModel, scorer: OnnxScorer, windows: torch.Tensor) -> float:
    """Max abs difference between torch on the CPU and ONNX Runtime on `windows`.

    The reference is a CPU copy: on CUDA, cuDNN's TF32 RNN kernels alone move LSTM
    scores by ~4e-4 (measured on an H200), which says nothing about the export.
    """
    expected = cpu_copy(model).element_scores(windows.cpu()).float()
    return float((scorer.element_scores(windows.cpu()) - expected).abs().max())


def probe_windows(model: WindowModel, n: int = 256, seed: int = 0) -> torch.Tensor:
    """Seeded standard-normal windows: the scale of standardised data, for parity checks."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.window, model.n_features, generator=gen)


@dataclass(frozen=True)
class OnnxExport:
    """Whether the candidate carries model.onnx, its measured parity, or why it does not."""

    family: str
    exported: bool
    max_abs_diff: float | None = None
    bytes: int = 0
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_export(model: WindowModel, probe: torch.Tensor | None = None
                 ) -> tuple[bytes | None, OnnxExport]:
    """(graph, outcome): the graph only when its scores match torch's on `probe` windows."""
    probe = probe_windows(model) if probe is None else probe
    try:
        data = export_onnx(model)
        diff = parity(model, OnnxScorer(data), probe)
    except Exception as err:  # noqa: BLE001 - any exporter failure means "no ONNX file"
        return None, OnnxExport(model.name, False, reason=f"export failed: {err}")
    if not diff <= PARITY_TOLERANCE:
        return None, OnnxExport(model.name, False, diff, len(data),
                                f"ONNX scores differ from torch by {diff:.3g} (> {PARITY_TOLERANCE})")
    return data, OnnxExport(model.name, True, diff, len(data))


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_candidate(cfg: DatasetConfig, trained: TrainedCandidate) -> OnnxExport:
    """model.onnx beside the candidate's weights, checked against torch; a family that cannot
    be exported keeps its torch weights only (the outcome says why)."""
    store = store_for(cfg)
    arguments = store.read_json(trained.file(FIT))["arguments"]
    model = model_from_bytes(arguments, store.read_bytes(trained.file(WEIGHTS)), compute_device(cfg))
    data, outcome = check_export(model)
    log = run_logger(__name__)
    if data is None:
        log.warning("%s: no model.onnx (%s); the version keeps torch weights only",
                    trained.family, outcome.reason)
    else:
        store.write_bytes(trained.file(ONNX), data)
        log.info("%s: exported ONNX (opset %d, %d bytes), parity %.2g", trained.family, OPSET,
                 outcome.bytes, outcome.max_abs_diff)
    store.write_json(trained.file(EXPORT), outcome.to_json())
    return outcome
