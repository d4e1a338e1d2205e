"""Rows in, scores out: the one scoring path shared by training, evaluation and nightly runs.

A stored version is scored in one way only, whoever asks (nightly, drift, promotion,
selection, the benchmark): `version_scorer` loads it once (an ensemble with each member
once) with the backend the config names, and `score_version(version, rows, context)`
scores `rows` under the CONTEXT RULE: each entity's rows are preceded by the last
`window - 1` rows of that entity strictly before its first row in `rows`, taken from
`context` (the validated layer, or the prepared scaled rows that are the same rows
scaled); a row with fewer than `window - 1` rows before it there has no full history and
is reported as NaN (not scored), never a score from fewer windows. So the same version
gives the same score to the same row whatever stretch a caller cut around it (a row's
score still uses the windows that end by the last row given: the end of a night is the
end of what the night knows). Training's row scores (row_scores.parquet) come from the
same primitives over the prepared rows: with the rule's NaN applied they are what
`score_version` gives on torch, so selection reuses them instead of scoring again.

Row rule (models/scoring.py): windows of stride 1 over each entity; a row's
contribution from a feature follows the version's row rule (models/scoring.py:
"mean_window", the default, is the mean over every window containing the row of that
window's per-feature mean over its steps; "mean_elem", "last_window", "max_window"),
divided by that feature's mean contribution on normal training rows
(`feature_scale`); the row score is the sum of its contributions, so the
explanation adds up to the score. The rule is a version's (`LoadedModel.row_rule`):
its feature scale and threshold were fitted under it. The scorer is a torch family or
its verified ONNX graph on ONNX Runtime (same call, same numbers within the export
tolerance).

Why two implementations of the row rule: a torch family scores where its series
lives (the GPU during training) through models.scoring.row_contributions, while an
ONNX graph is scored by `numpy_row_contributions`, the same rule and the same
float32 summation order in numpy, so a scoring worker needs no torch at all (the
`scoring` install). torch is imported only on the torch path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import polars as pl

from schemas.config import ROW_RULES, DatasetConfig, RowRule, WindowConfig
from tasks.common import compute_device, run_logger, store_for
from tasks.data.layer import load_validated
from tasks.data.scale import apply_scaler
from tasks.data.window import window_starts
from tasks.evaluation.combiners import row_combiner
from tasks.store import Store
from tasks.versions import (
    ONNX,
    WEIGHTS,
    LoadedModel,
    VersionRef,
    export_outcome,
    has_file,
    load_model,
    load_version_files,
    model_from_bytes,
)

if TYPE_CHECKING:  # the torch path imports these when it runs; the ONNX path never does
    import torch

    from models.base import WindowModel

CONTRIB_PREFIX = "contrib__"
"""Column prefix of per-feature contributions in the scores layer (`contrib__<feature>`)."""
DEFAULT_ROW_RULE: RowRule = WindowConfig().row_rule


class OnnxScorer:
    """Element scores from an ONNX graph on ONNX Runtime's CPU provider.

    numpy windows in, numpy element scores out. Given a torch tensor it answers with
    a tensor on the input's device, so `models.scoring.row_contributions` also
    accepts it in place of a torch model.
    """

    def __init__(self, onnx_bytes: bytes, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default
        self.session = ort.InferenceSession(onnx_bytes, sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, windows: np.ndarray) -> np.ndarray:
        """(B, L, F) windows -> (B, L, F) float32 element scores."""
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(windows, np.float32)})
        return out

    def element_scores(self, x: Any) -> Any:
        """`run` for numpy input; a torch tensor in gives a tensor back, on its device."""
        if isinstance(x, np.ndarray):
            return self.run(x)
        import torch  # only a caller that already holds a tensor gets here

        return torch.from_numpy(self.run(x.detach().cpu().float().numpy())).to(x.device)

    __call__ = element_scores


@dataclass(frozen=True)
class EnsembleMember:
    """What scores one member of an ensemble, its feature scale and its weight."""

    scorer: WindowModel | OnnxScorer
    feature_scale: list[float] | None
    weight: float
    rule: RowRule


@dataclass(frozen=True)
class EnsembleScorer:
    """An ensemble's members, each scored by its own torch model or ONNX graph; the rows
    combine in numpy (tasks.evaluation.combiners), so either path gives the same rule."""

    members: list[EnsembleMember]
    combine: Callable[[Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]
    """members' contributions -> (scores, contributions): the version's own combiner."""


def step_means(elements: np.ndarray) -> np.ndarray:
    """(B, L, F) -> (B, F) float32: each window's mean over its steps, summed step by step
    and divided by L like models.scoring.step_means (bit-identical results)."""
    total = elements[:, 0].astype(np.float32, copy=True)
    for step in range(1, elements.shape[1]):
        total += elements[:, step]
    return total / np.float32(elements.shape[1])


def feature_totals(means: np.ndarray) -> np.ndarray:
    """(B, F) -> (B,) float32, summed feature by feature like models.scoring.feature_totals."""
    total = means[:, 0].copy()
    for feature in range(1, means.shape[1]):
        total += means[:, feature]
    return total


def numpy_row_contributions(
    score: Callable[[np.ndarray], np.ndarray], series: np.ndarray, starts: np.ndarray,
    length: int, batch_size: int = 2048, rule: RowRule = DEFAULT_ROW_RULE,
) -> tuple[np.ndarray, np.ndarray]:
    """(contributions (T, F), coverage (T,)) of windows at `starts` over a (T, F) series;
    `score` maps (B, L, F) windows to element scores (e.g. `OnnxScorer.run`).

    The rules and the numbers of models.scoring.row_contributions without torch: each
    row's float32 sum runs over its windows in the same order (earliest start first,
    batch by batch), so the two agree to the bit on the same element scores.
    """
    if rule not in ROW_RULES:
        raise ValueError(f"unknown row rule {rule!r}; available: {', '.join(ROW_RULES)}")
    series = np.ascontiguousarray(series, dtype=np.float32)
    t, f = series.shape
    acc = np.zeros((t, f), dtype=np.float32)
    cover = np.zeros(t, dtype=np.float32)
    if len(starts) == 0:
        return np.full((t, f), np.nan, np.float32), cover
    steps = np.arange(length)
    best = np.full(t, -np.inf, dtype=np.float32)
    for i in range(0, len(starts), batch_size):
        batch = starts[i : i + batch_size]
        elements = score(series[batch[:, None] + steps])  # (B, L, F), one gather
        if rule == "last_window":  # one window ends at each row
            acc[batch + length - 1] += step_means(elements)
            cover[batch + length - 1] += 1
            continue
        means = None if rule == "mean_elem" else step_means(elements)  # (B, F)
        totals = feature_totals(means) if rule == "max_window" else None
        # Step L-1 first: a row's windows then arrive earliest start first, as in torch's
        # index_add_. Consecutive starts (the usual batch, inside one entity) add slices;
        # otherwise distinct starts make each fancy-indexed += touch a row once.
        first = int(batch[0])
        consecutive = int(batch[-1]) - first == len(batch) - 1
        for step in range(length - 1, -1, -1):
            rows = slice(first + step, first + step + len(batch)) if consecutive else batch + step
            cover[rows] += 1
            if totals is not None:  # max_window: keep the covering window with the largest total
                better = totals > best[rows]
                at = (batch + step)[better]
                best[at] = totals[better]
                acc[at] = means[better]
            else:
                acc[rows] += elements[:, step] if means is None else means
    divisor = cover if rule in ("mean_elem", "mean_window") else (cover > 0).astype(np.float32)
    contributions = acc / np.maximum(divisor, 1)[:, None]
    contributions[cover == 0] = np.nan
    return contributions, cover


def series_tensor(scaled: pl.DataFrame, features: list[str], device: torch.device) -> torch.Tensor:
    """The whole scaled series as one (T, F) float32 tensor on the device."""
    import torch

    return torch.from_numpy(series_array(scaled, features)).to(device)


def series_array(scaled: pl.DataFrame, features: list[str]) -> np.ndarray:
    """The whole scaled series as one (T, F) float32 array."""
    return np.ascontiguousarray(scaled.select(features).to_numpy().astype("float32"))


def raw_contributions(
    scorer: WindowModel | OnnxScorer, scaled: pl.DataFrame, features: list[str], length: int,
    batch_size: int = 2048, *, rule: RowRule,
) -> np.ndarray:
    """(T, F) contribution per row and feature under the row `rule`, before per-feature
    normalisation. `rule` has no default on purpose: it must be the version's own.

    `scaled` is sorted by entity, timestamp; rows no full window covers are NaN.
    """
    starts = window_starts(scaled["entity"].rle_id().to_numpy(), length, 1)
    if isinstance(scorer, OnnxScorer):
        return numpy_row_contributions(scorer.run, series_array(scaled, features), starts, length,
                                       batch_size, rule)[0]
    import torch

    from models.engine import WindowSet
    from models.scoring import row_contributions

    series = series_tensor(scaled, features, scorer.device)
    contrib, _ = row_contributions(scorer, WindowSet(series, torch.from_numpy(starts), length),
                                   batch_size, rule)
    return contrib.cpu().numpy()


def normalised(raw: np.ndarray, feature_scale: np.ndarray | list[float] | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(scores (T,), contributions (T, F)) from raw contributions and a feature scale."""
    contrib = raw if feature_scale is None else raw / np.asarray(feature_scale, dtype=np.float32)
    return contrib.sum(axis=1), contrib


def score_rows(
    scorer: WindowModel | OnnxScorer | EnsembleScorer, scaled: pl.DataFrame, features: list[str],
    length: int, feature_scale: np.ndarray | list[float] | None = None, batch_size: int = 2048, *,
    rule: RowRule,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (T,), contributions (T, F)) for a frame sorted by entity, timestamp, under
    the row `rule` (a version's `LoadedModel.row_rule`; no default, so no caller can
    silently score a version under another rule than the one it was calibrated with).

    With `feature_scale` (each feature's mean contribution on normal training rows),
    contributions are in units of that feature's typical training error, so a
    feature that is always hard to reconstruct cannot drown out the others. An ensemble
    scores each member with its own feature scale and combines the contributions with
    the members' weights (`feature_scale` is then unused: the ensemble has none).
    """
    if isinstance(scorer, EnsembleScorer):  # each member under its own version's rule
        parts = [normalised(raw_contributions(m.scorer, scaled, features, length, batch_size,
                                              rule=m.rule), m.feature_scale)[1]
                 for m in scorer.members]
        return scorer.combine(parts)
    raw = raw_contributions(scorer, scaled, features, length, batch_size, rule=rule)
    return normalised(raw, feature_scale)


def feature_error_scale(contributions: np.ndarray) -> np.ndarray:
    """Mean contribution per feature over (normal training) rows, floored to stay positive."""
    scale = np.nanmean(contributions, axis=0).astype(np.float64)
    floor = max(float(np.nanmean(scale)) * 1e-3, 1e-12)
    return np.maximum(np.nan_to_num(scale, nan=floor), floor)


# -- a stored version: loaded once, scored under one context rule --------------------------

CONTEXT_FLAG = "__context"
"""Marks the context rows `with_context` puts before the scored rows (dropped after scoring)."""
CONTEXT_LOOKBACK_DAYS = (1, 8, 64)
"""How far back `validated_context` reads, widening only while an entity still lacks rows."""


class ScoringBackendError(RuntimeError):
    """A version cannot be scored here: no graph for "onnx" and no torch to fall back on,
    or backend "torch" on an install without torch."""


@dataclass(frozen=True)
class VersionScorer:
    """A verified version and what runs it: its torch model, its ONNX graph, or (an ensemble)
    its members' scorers. `backend` is what runs; `note` says why that is not the config's."""

    loaded: LoadedModel
    scorer: WindowModel | OnnxScorer | EnsembleScorer
    backend: str
    note: str | None = None

    @property
    def ref(self) -> VersionRef:
        return self.loaded.ref


@dataclass(frozen=True)
class ScoredRows:
    """`score_version`'s answer: the scored rows (scaled by the version's scaler, sorted by
    entity and timestamp, context dropped), their scores and per-feature contributions."""

    rows: pl.DataFrame
    scores: np.ndarray  # (T,) float64; NaN where a row has no full history
    contributions: np.ndarray  # (T, F) float32; each row sums to its score


def version_scorer(cfg: DatasetConfig, ref: VersionRef, store: Store | None = None) -> VersionScorer:
    """Load a version once (an ensemble with each member once, every file sha256-checked) with
    the config's `[scoring] backend`: its verified ONNX graph on ONNX Runtime, or torch.

    Without a graph, "onnx" falls back to torch when torch is installed (said aloud in
    `note`); without torch that is a ScoringBackendError naming the version and why its
    export was refused. An ensemble runs "onnx" only when every member does.
    """
    store = store or store_for(cfg)
    return _scorer_for(cfg, store, load_model(store, ref, None))


def _scorer_for(cfg: DatasetConfig, store: Store, loaded: LoadedModel) -> VersionScorer:
    if loaded.is_ensemble:  # members were loaded (and verified) with the ensemble: reuse them
        parts = [(_scorer_for(cfg, store, member), weight) for member, weight in loaded.members]
        scorer = EnsembleScorer([EnsembleMember(p.scorer, p.loaded.feature_scale, w,
                                                p.loaded.row_rule) for p, w in parts],
                                row_combiner(loaded.config["ensemble"]))
        backends = {p.backend for p, _ in parts}
        notes = [f"{p.ref.family}: {p.note}" for p, _ in parts if p.note]
        return VersionScorer(loaded, scorer, "onnx" if backends == {"onnx"} else "torch",
                             "; ".join(notes) or None)
    ref, note = loaded.ref, None
    if cfg.scoring.backend == "onnx":
        if has_file(store, ref, ONNX):
            graph = load_version_files(store, ref, [ONNX])[ONNX]  # sha256-checked
            return VersionScorer(loaded, OnnxScorer(graph, cfg.scoring.threads), "onnx")
        why = refused_export_reason(store, ref)
        if not torch_installed():
            raise ScoringBackendError(
                f"{cfg.name}: [scoring] backend is 'onnx' but champion {ref.family}/{ref.version} "
                f"has no model.onnx ({why}), and torch is not installed to score it otherwise; "
                f"install the training set (pip install 'nightowl[train]') or promote a version "
                f"with a verified graph")
        note = (f"backend 'onnx' configured, but {ref.family}/{ref.version} has no model.onnx "
                f"({why}): scored with torch")
        run_logger(__name__).warning("%s: %s", cfg.name, note)
    elif not torch_installed():
        raise ScoringBackendError(
            f"{cfg.name}: [scoring] backend is 'torch' but torch is not installed (a scoring "
            f"install); set [scoring] backend = 'onnx' to score {ref.family}/{ref.version} "
            f"through its model.onnx")
    weights = load_version_files(store, ref, [WEIGHTS])[WEIGHTS]
    model = model_from_bytes(loaded.config["model"], weights, compute_device(cfg))
    return VersionScorer(replace(loaded, model=model), model, "torch", note)


def torch_installed() -> bool:
    """Whether torch can be imported here (a `scoring` install has none)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def refused_export_reason(store: Store, ref: VersionRef) -> str:
    """Why a version has no graph, from its metrics.json `export` section."""
    outcome = export_outcome(store, ref)
    if outcome is None:
        return "no export was recorded for this version"
    return f"export refused: {outcome.get('reason') or 'no reason recorded'}"


def with_context(rows: pl.DataFrame, context: pl.DataFrame | None, window: int) -> pl.DataFrame:
    """`rows` after the last `window - 1` rows of each entity in `context` that lie before
    that entity's first row in `rows`; sorted by entity, timestamp, context rows flagged."""
    rows = rows.with_columns(pl.lit(False).alias(CONTEXT_FLAG))
    if context is None or window <= 1 or context.height == 0:
        return rows.sort("entity", "timestamp")
    first = rows.group_by("entity").agg(pl.col("timestamp").min().alias("__first"))
    tail = (context.join(first, on="entity", how="inner")
            .filter(pl.col("timestamp") < pl.col("__first"))
            .sort("entity", "timestamp")
            .group_by("entity", maintain_order=True).tail(window - 1)
            .with_columns(pl.lit(True).alias(CONTEXT_FLAG)))
    shared = [c for c in rows.columns if c in tail.columns]  # e.g. no `split` tag: null there
    return pl.concat([tail.select(shared), rows], how="diagonal").sort("entity", "timestamp")


def validated_context(store: Store, cfg: DatasetConfig, before: datetime,
                      entities: list[str] | None, window: int) -> pl.DataFrame:
    """Validated rows before `before` holding each entity's last `window - 1` rows: the day
    before, read further back (CONTEXT_LOOKBACK_DAYS) only while some entity lacks rows. An
    entity with fewer rows in reach gets its first rows reported as not scored."""
    frame = load_validated(store, cfg, before, before, entities)  # the layer's empty frame
    if window <= 1:
        return frame
    for days in CONTEXT_LOOKBACK_DAYS:
        frame = load_validated(store, cfg, before - timedelta(days=days), before, entities)
        counts = dict(frame.group_by("entity").len().iter_rows())
        wanted = entities if entities is not None else list(counts)
        if all(counts.get(e, 0) >= window - 1 for e in wanted):
            break
    return frame


def full_history(frame: pl.DataFrame, window: int) -> np.ndarray:
    """(T,) bool: rows with at least `window - 1` rows of their entity before them in `frame`."""
    position = frame.select(pl.int_range(pl.len()).over("entity"))
    return (position.to_series() >= window - 1).to_numpy()


def score_version(version: VersionScorer, rows: pl.DataFrame,
                  context: pl.DataFrame | None = None, *, scaled: bool = False,
                  batch_size: int = 2048) -> ScoredRows:
    """Score `rows` with a loaded version under the context rule (module docstring).

    `rows` and `context` are validated rows (scaled here with the version's own scaler,
    once) or, with `scaled`, rows already in the version's scaled space (the prepared
    data, or validation rows with injected anomalies). Scores and contributions come
    in the version's row rule and feature scale; an ensemble combines its members'.
    """
    loaded = version.loaded
    frame = with_context(rows, context, loaded.window)
    if not scaled:
        frame = apply_scaler(frame, loaded.scaler)
    scores, contrib = score_rows(version.scorer, frame, loaded.features, loaded.window,
                                 loaded.feature_scale, batch_size, rule=loaded.row_rule)
    short = ~full_history(frame, loaded.window)
    scores[short] = np.nan
    contrib[short] = np.nan
    keep = ~frame[CONTEXT_FLAG].to_numpy()
    return ScoredRows(frame.filter(pl.Series(keep)).drop(CONTEXT_FLAG), scores[keep],
                      contrib[keep])
