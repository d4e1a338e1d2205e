"""ONNX export (opset 17, dynamic batch) and scoring through ONNX Runtime on the CPU."""

from __future__ import annotations

import onnx
import torch

from models.dense_ae import DenseAE
from models.engine import WindowSet
from models.registry import FAMILIES, build_model
from models.scoring import row_contributions
from tasks.scoring import OnnxScorer
from tasks.training.export import OPSET, check_export, export_onnx

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
