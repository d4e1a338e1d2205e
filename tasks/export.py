"""ONNX export of a family's element scores, and scoring through ONNX Runtime on the CPU.

Why: a version carries `model.onnx` beside its safetensors weights so scoring can
run without torch (ONNX Runtime, CPU), and the file is checked against torch at
export time so a silently wrong export never reaches a version. The graph maps
windows (B, L, F) to element scores (B, L, F), B dynamic; legacy TorchScript-based
exporter (`dynamo=False`), ONNX opset 17.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import onnxruntime as ort
import torch

from models.base import WindowModel
from models.registry import build_model

log = logging.getLogger(__name__)

OPSET = 17
ONNX_FILE = "model.onnx"
PARITY_TOLERANCE = 1e-4
INPUT, OUTPUT = "windows", "element_scores"


class ExportError(RuntimeError):
    """A family could not be exported, or its export disagrees with torch."""


def export_onnx(model: WindowModel) -> bytes:
    """Serialise `model.export_module()` (windows -> element scores) as ONNX bytes."""
    module = cpu_copy(model).export_module().eval()  # never move or mutate the caller's model
    example = torch.zeros(2, model.window, model.n_features)  # 2, not 1: no size-1 broadcasts baked in
    buffer = io.BytesIO()
    # Traced with grad enabled on purpose: under no_grad, eval-mode TransformerEncoderLayer
    # takes its fused fast path (aten::_transformer_encoder_layer_fwd), which ONNX lacks.
    with warnings.catch_warnings():  # tracer notes on shape checks; parity is what counts
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


class OnnxScorer:
    """Element scores from an ONNX graph on ONNX Runtime's CPU provider.

    Callable like `model.element_scores`, so `models.scoring.row_contributions`
    accepts it in place of a torch model.
    """

    def __init__(self, onnx_bytes: bytes, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default
        self.session = ort.InferenceSession(onnx_bytes, sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def element_scores(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, L, F) windows -> (B, L, F) float32 element scores, on the input's device."""
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        array = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else x
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(array, np.float32)})
        return torch.from_numpy(out).to(device)

    __call__ = element_scores


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


def onnx_version_files(model: WindowModel, probe: torch.Tensor | None = None) -> dict[str, bytes]:
    """{"model.onnx": bytes} checked against torch on `probe` windows; {} (with a warning)
    if the family cannot be exported, so the version still registers and scores via torch."""
    probe = probe_windows(model) if probe is None else probe
    try:
        data = export_onnx(model)
        diff = parity(model, OnnxScorer(data), probe)
    except Exception as err:  # noqa: BLE001 - any exporter failure means "no ONNX file"
        log.warning("%s: ONNX export failed (%s); the version keeps torch weights only",
                    model.name, err)
        return {}
    if not diff <= PARITY_TOLERANCE:
        log.warning("%s: ONNX scores differ from torch by %.3g (> %g); not storing model.onnx",
                    model.name, diff, PARITY_TOLERANCE)
        return {}
    log.info("%s: exported ONNX (opset %d, %d bytes), parity %.2g", model.name, OPSET,
             len(data), diff)
    return {ONNX_FILE: data}
