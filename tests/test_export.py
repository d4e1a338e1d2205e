"""ONNX export (opset 17, dynamic batch) and scoring through ONNX Runtime on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import polars as pl
import pytest
import torch

from models.dense_ae import DenseAE
from models.engine import WindowSet
from models.registry import FAMILIES, build_model
from models.scoring import row_contributions
from tasks.data.window import window_starts
from tasks.scoring import OnnxScorer, numpy_row_contributions
from tasks.training.export import (
    OPSET,
    ROW_TOLERANCE,
    RULE,
    check_export,
    cpu_copy,
    export_onnx,
    parity,
    refusal,
    torch_elements,
)
from tasks.training.probe import BLOCK_WINDOWS, Probe, select_probe

torch.set_num_threads(2)


def small_lstm() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lstm_ae", 4, 10, {"hidden": 16, "latent": 4}).eval()


def test_graph_states_opset_and_dynamic_batch_axis() -> None:
    graph = onnx.load_from_string(export_onnx(small_lstm()))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [10, 4]


def test_row_contributions_through_onnx_runtime_match_torch() -> None:
    model = small_lstm()
    gen = torch.Generator().manual_seed(2)
    series = torch.randn(300, 4, generator=gen)
    windows = WindowSet(series, torch.arange(0, 291, 3), 10)
    expected, cover = row_contributions(model, windows, batch_size=64)
    got, cover_onnx = row_contributions(OnnxScorer(export_onnx(model)), windows, batch_size=64)
    assert torch.equal(cover, cover_onnx)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, equal_nan=True)
    end = int(windows.starts[-1]) + 10  # rows after the last window are not covered
    assert torch.isnan(got[end:]).all() and torch.isfinite(got[:end]).all() and end < 300


def test_export_leaves_the_callers_model_untouched() -> None:
    model = small_lstm().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_checked_export_gives_a_graph_and_its_measured_parity() -> None:
    data, outcome = check_export(small_lstm())
    assert data is not None and outcome.exported and outcome.bytes == len(data)
    assert 0 <= outcome.max_abs_diff <= 1e-4 and outcome.reason is None
    scorer = OnnxScorer(data)
    assert scorer.element_scores(torch.zeros(3, 10, 4)).shape == (3, 10, 4)


class _SVDScores(DenseAE):
    """A family whose score uses an op ONNX opset 17 cannot express."""

    name = "svd_scores"

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        return super().element_scores(x) + torch.linalg.svdvals(x).sum() * 0


def test_a_family_that_cannot_export_says_why(monkeypatch) -> None:
    monkeypatch.setitem(FAMILIES, _SVDScores.name, _SVDScores)
    model = build_model(_SVDScores.name, 4, 10, {"hidden": [8], "latent": 2})
    data, outcome = check_export(model)
    assert data is None and not outcome.exported
    assert outcome.reason.startswith("export failed") and "svdvals" in outcome.reason


# -- the row rule without torch, and the parity check on real rows --------------------------


@pytest.mark.parametrize("rule", ["mean_elem", "mean_window"])
def test_numpy_row_mapping_gives_torchs_numbers_to_the_bit(rule: str) -> None:
    """Two entities, windows over batch boundaries: the numpy rule (the ONNX path) and
    models.scoring.row_contributions agree exactly on the same element scores, under
    either row rule."""
    model = small_lstm()
    series = torch.randn(500, 4, generator=torch.Generator().manual_seed(5))
    entity = np.repeat([0, 1], [230, 270])
    starts = window_starts(entity, 10, 1)
    starts = starts[(starts < 150) | (starts >= 230)]  # rows 159..229: no window
    expected, cover = row_contributions(model, WindowSet(series, torch.from_numpy(starts), 10),
                                        batch_size=97, rule=rule)
    got, got_cover = numpy_row_contributions(lambda w: torch_elements(model, w), series.numpy(),
                                             starts, 10, batch_size=97, rule=rule)
    np.testing.assert_array_equal(got_cover, cover.numpy())
    np.testing.assert_array_equal(got, expected.numpy())  # NaN where no window covers a row
    assert np.isnan(got[159:230]).all() and np.isfinite(got[:159]).all()
    assert np.isfinite(got[230:]).all() and cover.max() == 10


def spiky_probe(model, seed: int = 3) -> Probe:
    """Three blocks of sine rows; the middle one carries a spike the model cannot explain."""
    rows = model.window + 60
    t = np.arange(3 * rows)[:, None]
    series = np.sin(t / 3 + np.arange(model.n_features)).astype(np.float32)
    series += 0.05 * np.random.default_rng(seed).standard_normal(series.shape).astype(np.float32)
    series[rows + 30 : rows + 34] += 4.0
    return Probe(series, np.repeat(np.arange(3, dtype=np.int32), rows), "test rows")


def test_parity_is_measured_on_row_scores_and_verdicts_at_the_threshold() -> None:
    model = small_lstm()
    probe = spiky_probe(model)
    _, clean = check_export(model, probe)  # no threshold: the scale is the largest row score
    threshold = 0.5 * clean.scale
    data, outcome = check_export(model, probe, threshold)
    assert data is not None and outcome.exported and outcome.reason is None
    assert outcome.probe == "test rows" and outcome.probe_rows == 3 * 70
    assert outcome.probe_windows == 3 * 61 and outcome.threshold == threshold
    assert outcome.flagged_rows > 0 and outcome.verdict_flips == 0
    assert outcome.row_max_rel_diff == outcome.row_max_abs_diff / threshold < 1e-5
    assert outcome.rule == RULE


def perturbed(model, factor: float):
    """A copy whose decoder output layer is scaled: a graph that is not quite the model."""
    other = build_model("lstm_ae", 4, 10, {"hidden": 16, "latent": 4}).eval()
    state = model.state_dict()
    other.load_state_dict({k: v * factor if k.startswith("out") else v for k, v in state.items()})
    return other


def test_a_graph_that_changes_verdicts_or_drifts_from_torch_is_refused() -> None:
    model = small_lstm()
    assert any(k.startswith("out") for k in model.state_dict())
    probe = spiky_probe(model)
    scores = probe_scores(lambda w: torch_elements(model, w), probe)
    threshold = float(np.quantile(scores[np.isfinite(scores)], 0.9))
    far = OnnxScorer(export_onnx(perturbed(model, 1.5)))
    measured = parity(model, far, probe, threshold, None)
    assert measured["verdict_flips"] > 0
    assert refusal(measured).startswith(f"{measured['verdict_flips']} of 210 probe rows change")
    # A graph 5% off with nothing near the threshold on the probe: no flip here, but
    # rows near the threshold on another night would flip, so it is refused as well.
    near = OnnxScorer(export_onnx(perturbed(model, 1.1)))
    above_all = 1.01 * max(np.nanmax(scores), np.nanmax(probe_scores(near.run, probe)))
    measured = parity(model, near, probe, float(above_all), None)
    assert measured["verdict_flips"] == 0 and measured["row_max_rel_diff"] > ROW_TOLERANCE
    assert refusal(measured).startswith("row scores differ by")


def probe_scores(score, probe: Probe, length: int = 10) -> np.ndarray:
    starts = window_starts(probe.block, length, 1)
    return numpy_row_contributions(score, probe.series, starts, length)[0].sum(axis=1)


def test_probe_is_validation_rows_in_blocks_within_one_entity_around_the_top_scores() -> None:
    rows = 400
    frame = pl.DataFrame({
        "entity": np.repeat(["a", "b"], rows),
        "split": np.tile(np.repeat(["train", "validation"], [150, 250]), 2),
        "s0": np.arange(2 * rows, dtype=np.float32),
    })
    scores = np.zeros(2 * rows)
    scores[rows + 300] = 9.0  # entity b's validation rows hold the highest score
    probe = select_probe(frame, scores, ["s0"], length=5, n_blocks=4)
    size = 5 + BLOCK_WINDOWS - 1
    blocks = probe.series[:, 0].reshape(-1, size)
    assert probe.source == "validation rows" and 2 <= len(blocks) <= 4  # 2 fit per entity
    assert Probe.from_bytes(probe.to_bytes()).source == "validation rows"
    validation = np.flatnonzero(frame["split"].to_numpy() == "validation")
    for block in blocks.astype(int):
        assert np.isin(block, validation).all() and (block < rows).all() != (block >= rows).all()
    assert any(rows + 300 in block for block in blocks.astype(int))


def test_a_probe_row_within_float_noise_of_the_threshold_does_not_refuse_the_graph() -> None:
    """The threshold is put exactly between a row's torch and ONNX Runtime scores (apart by
    float noise only): its verdict flips, yet it is no disagreement, so the graph ships."""
    model = small_lstm()
    probe = spiky_probe(model)
    graph = export_onnx(model)
    want = probe_scores(lambda w: torch_elements(cpu_copy(model), w), probe)
    got = probe_scores(OnnxScorer(graph).run, probe)
    gap = np.where(np.isfinite(want), np.abs(got - want), 0.0)
    row = int(np.argmax(gap))
    assert 0 < gap[row] < 1e-5 * want[row]  # a noise-sized difference to sit in between
    threshold = float((want[row] + got[row]) / 2)
    data, outcome = check_export(model, probe, threshold)
    assert outcome.near_threshold_flips >= 1 and outcome.verdict_flips == 0
    assert data is not None and outcome.exported and outcome.reason is None
    # The same threshold with a graph that really disagrees is still refused.
    off = parity(model, OnnxScorer(export_onnx(perturbed(model, 1.5))), probe, threshold, None)
    assert off["row_max_rel_diff"] > ROW_TOLERANCE and refusal(off) is not None
