"""Export stage: a family's element scores as an ONNX graph, checked against torch.

Why: a version carries `model.onnx` beside its safetensors weights so nightly
scoring can run without torch (ONNX Runtime, CPU; the `scoring` install). The
graph maps windows (B, L, F) to element scores (B, L, F), B dynamic; legacy
TorchScript-based exporter (`dynamo=False`), ONNX opset 17.

The check compares what users see, on real data: the candidate's probe of
validation rows (tasks.training.probe) is scored both ways, torch on the CPU and
the graph on ONNX Runtime, through the row rule, and the row scores and the
verdicts at the calibrated threshold are compared. The measured differences go
to export.json (then metrics.json, `export`). The rule (`RULE`): the graph is
refused when verdicts would differ, that is when any probe row's verdict
differs, or when any probe row's score differs by more than `ROW_TOLERANCE` x
the threshold (beyond that, rows near the threshold on other nights would flip).
A row whose torch score lies within that same tolerance band of the threshold
(|score - threshold| <= `ROW_TOLERANCE` x threshold) does not count as a flip:
float noise alone can put it on either side (10 of 13 refusals on unseen public
series were such rows, e.g. a difference of 1.5e-5 at threshold 15.6), and the
row-score bound still refuses a graph that is really off there. The flips the
band forgave are reported (`near_threshold_flips`). Float noise is ~1e-7 of the
threshold; a wrong graph is off by O(1).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.base import WindowModel
from models.registry import build_model
from schemas.config import LEGACY_ROW_RULE, DatasetConfig, RowRule
from tasks.common import compute_device, process_lock, run_logger, store_for
from tasks.data.window import window_starts
from tasks.scoring import DEFAULT_ROW_RULE, OnnxScorer, normalised, numpy_row_contributions
from tasks.training.probe import PROBE, Probe
from tasks.training.train import FIT, TrainedCandidate
from tasks.versions import ONNX, THRESHOLD, WEIGHTS, model_from_bytes

OPSET = 17
EXPORT = "export.json"
ROW_TOLERANCE = 1e-3
RULE = (f"refused iff a probe row's verdict (score > threshold) differs between torch and "
        f"ONNX Runtime while its torch score is more than {ROW_TOLERANCE:g} x threshold from the "
        f"threshold, or a probe row's score differs by more than {ROW_TOLERANCE:g} x threshold")
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


def random_probe(model: WindowModel, blocks: int = 4, seed: int = 0) -> Probe:
    """Seeded standard-normal rows (the scale of standardised data), for a candidate that
    saved no probe of its own."""
    rows = model.window + 63
    gen = np.random.default_rng(seed)
    series = gen.standard_normal((blocks * rows, model.n_features)).astype(np.float32)
    return Probe(series, np.repeat(np.arange(blocks, dtype=np.int32), rows), "standard normal")


@dataclass(frozen=True)
class OnnxExport:
    """Whether the candidate carries model.onnx, the parity measured on its probe, or why not.

    `max_abs_diff`: element scores; `row_max_abs_diff` / `row_max_rel_diff`: row scores,
    absolute and divided by `scale` (the threshold, or without one the largest torch row
    score); `flagged_rows`: probe rows over the threshold by torch; `verdict_flips`: rows
    whose verdict ONNX Runtime would change, outside the tolerance band around the threshold;
    `near_threshold_flips`: changed verdicts inside it (float noise, not refused).
    """

    family: str
    exported: bool
    reason: str | None = None
    bytes: int = 0
    probe: str | None = None
    probe_rows: int = 0
    probe_windows: int = 0
    max_abs_diff: float | None = None
    row_max_abs_diff: float | None = None
    row_max_rel_diff: float | None = None
    scale: float | None = None
    threshold: float | None = None
    flagged_rows: int | None = None
    verdict_flips: int | None = None
    near_threshold_flips: int | None = None
    rule: str = RULE

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def torch_elements(model: WindowModel, windows: np.ndarray) -> np.ndarray:
    """(B, L, F) element scores of numpy windows by a CPU torch model."""
    return model.element_scores(torch.from_numpy(np.ascontiguousarray(windows))).float().numpy()


def parity(model: WindowModel, scorer: OnnxScorer, probe: Probe, threshold: float | None,
           feature_scale: list[float] | None, rule: RowRule = DEFAULT_ROW_RULE) -> dict[str, Any]:
    """Torch on the CPU vs ONNX Runtime on the probe: element, row and verdict differences.

    The reference is a CPU copy: on CUDA, cuDNN's TF32 RNN kernels alone move LSTM
    scores by ~4e-4 (measured on an H200), which says nothing about the export.
    """
    reference = cpu_copy(model)
    length = model.window
    starts = window_starts(probe.block, length, 1)
    windows = probe.series[starts[:, None] + np.arange(length)]  # (N, L, F), a few thousand
    elements = np.abs(scorer.run(windows) - torch_elements(reference, windows))
    rows = [normalised(numpy_row_contributions(score, probe.series, starts, length,
                                               rule=rule)[0], feature_scale)[0]
            for score in (lambda w: torch_elements(reference, w), scorer.run)]
    want, got = rows
    covered = np.isfinite(want)
    diff = np.where(np.isfinite(got), np.abs(got - want), np.inf)[covered]
    scale = float(threshold) if threshold is not None and threshold > 0 else float(
        np.max(want[covered], initial=0.0)) or 1.0
    out: dict[str, Any] = {
        "probe": probe.source, "probe_rows": probe.rows, "probe_windows": len(starts),
        "max_abs_diff": float(np.max(elements, initial=0.0)),
        "row_max_abs_diff": float(np.max(diff, initial=0.0)),
        "row_max_rel_diff": float(np.max(diff, initial=0.0)) / scale, "scale": scale,
    }
    if threshold is not None:
        above = want[covered] > threshold
        flipped = above != (np.nan_to_num(got[covered], nan=-np.inf) > threshold)
        in_band = np.abs(want[covered] - threshold) <= ROW_TOLERANCE * scale
        out |= {"threshold": float(threshold), "flagged_rows": int(above.sum()),
                "verdict_flips": int((flipped & ~in_band).sum()),
                "near_threshold_flips": int((flipped & in_band).sum())}
    return out


def refusal(measured: dict[str, Any]) -> str | None:
    """Why the graph must not ship (`RULE`), or None when it may."""
    if measured.get("verdict_flips"):
        return (f"{measured['verdict_flips']} of {measured['probe_rows']} probe rows change "
                f"verdict at threshold {measured['threshold']:.6g}")
    if not measured["row_max_rel_diff"] <= ROW_TOLERANCE:
        return (f"row scores differ by {measured['row_max_rel_diff']:.3g} x the score scale "
                f"{measured['scale']:.6g} (> {ROW_TOLERANCE:g})")
    return None


def check_export(model: WindowModel, probe: Probe | None = None, threshold: float | None = None,
                 feature_scale: list[float] | None = None, rule: RowRule = DEFAULT_ROW_RULE,
                 ) -> tuple[bytes | None, OnnxExport]:
    """(graph, outcome): the graph only when it passes `RULE` on the probe's rows, scored
    under the candidate's row `rule`."""
    probe = random_probe(model) if probe is None else probe
    try:
        data = export_onnx(model)
        measured = parity(model, OnnxScorer(data), probe, threshold, feature_scale, rule)
    except Exception as err:  # noqa: BLE001 - any exporter failure means "no ONNX file"
        return None, OnnxExport(model.name, False, reason=f"export failed: {err}")
    reason = refusal(measured)
    return (None if reason else data), OnnxExport(model.name, reason is None, reason, len(data),
                                                  **measured)


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_candidate(cfg: DatasetConfig, trained: TrainedCandidate) -> OnnxExport:
    """model.onnx beside the candidate's weights, checked against torch on its probe at its
    calibrated threshold; a refused graph leaves torch weights only (the outcome says why)."""
    store = store_for(cfg)
    fitted = store.read_json(trained.file(FIT))
    arguments = fitted["arguments"]
    model = model_from_bytes(arguments, store.read_bytes(trained.file(WEIGHTS)), compute_device(cfg))
    probe = (Probe.from_bytes(store.read_bytes(trained.file(PROBE)))
             if store.exists(trained.file(PROBE)) else None)
    calibrated = (store.read_json(trained.file(THRESHOLD))
                  if store.exists(trained.file(THRESHOLD)) else {})
    data, outcome = check_export(model, probe, calibrated.get("threshold"),
                                 trained.feature_scale,
                                 fitted.get("row_rule", LEGACY_ROW_RULE))
    log = run_logger(__name__)
    if data is None:
        log.warning("%s: no model.onnx (%s); the version keeps torch weights only",
                    trained.family, outcome.reason)
    else:
        store.write_bytes(trained.file(ONNX), data)
        log.info("%s: exported ONNX (opset %d, %d bytes); on %d %s: rows differ by %.2g x %s, "
                 "%s verdict flips", trained.family, OPSET, outcome.bytes, outcome.probe_rows,
                 outcome.probe, outcome.row_max_rel_diff, "threshold" if outcome.threshold
                 else "max score", outcome.verdict_flips)
    store.write_json(trained.file(EXPORT), outcome.to_json())
    return outcome
