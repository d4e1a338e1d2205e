"""Reference detectors on the benchmark runner's own rows: PyOD's defaults and the chapter's LSTM-AE.

Why here: `nightowl benchmark ... --baselines` must score the reference detectors on
exactly the rows, splits and metric code of the families it benchmarks, so the
runner (flows/benchmark.py) imports them. The module stays pure in the house sense
(no Prefect, no store, no I/O): arrays in, metric rows out. PyOD (the `bench` extra)
is a compute library imported only when a PyOD detector runs.

What is compared, and on what:

- PyOD KNN, LOF, PCA, IForest, AutoEncoder with PyOD's documented defaults, fitted on
  the normal train rows and scoring single ROWS (not windows: the off-the-shelf use,
  and the setting of issue 10's table, KNN 0.46 on machine-2-1), on the pipeline's
  scaled rows (the runner's scaler, fitted on train rows);
- the reference chapter's LSTM autoencoder (section 4.4.3) re-implemented in its own
  settings (below; code not copied): windows of 50 rows at training stride 10, Adam
  1e-3, batch 32, 20 epochs, window MSE given to the window's LAST row, on data in
  [0, 1] as the chapter assumes: rows as shipped when the train rows already lie in
  [0, 1] (SMD, ASD), else min-max scaled on train rows (NAB); tables (window 1, no
  time order) get no chapter row;
- "pyod validation pick": the PyOD detector with the best validation PR-AUC, reported
  with its score-split numbers (a deployable choice: no look at the score split);
- "baselines rank-mean": every baseline's scores turned into ranks over the validation
  and score rows together (label-free), averaged.

Thresholds (for FPR@thr, F1, PA-F1): split-conformal on the validation normal rows at
the config's target FPR, as calibration does.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from tasks.evaluation.metrics import evaluate, pr_auc
from tasks.evaluation.thresholds import conformal_fpr_threshold

log = logging.getLogger(__name__)

PYOD_RUNNER = ("KNN", "LOF", "PCA", "IForest", "AutoEncoder")
"""The PyOD detectors `--baselines` runs (issue 10); `pyod_detectors` knows a few more."""
CHAPTER = "chapter LSTM-AE"
PYOD_PICK = "pyod validation pick"
RANK_MEAN = "baselines rank-mean"


# -- the chapter's LSTM autoencoder ----------------------------------------------------


@dataclass(frozen=True)
class ChapterSettings:
    """The chapter's hyper-parameters; every field is an ablation knob."""

    window: int = 50
    stride: int = 10
    hidden: int = 64
    layers: int = 2
    latent: int = 32
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    max_train_windows: int | None = None  # None: every stride-th window (the chapter)


class ChapterLSTMAE(nn.Module):
    """Encoder state -> latent z -> decoder initialised from z and fed z at every step."""

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 2, latent: int = 32) -> None:
        super().__init__()
        self.layers = layers
        self.encoder = nn.LSTM(n_features, hidden, layers, batch_first=True)
        self.to_latent = nn.Linear(hidden, latent)
        self.to_state = nn.Linear(latent, hidden)
        self.decoder = nn.LSTM(latent, hidden, layers, batch_first=True)
        self.output = nn.Linear(hidden, n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.encoder(x)
        z = self.to_latent(h[-1])  # (B, latent): the top layer's final hidden state
        h0 = self.to_state(z).unsqueeze(0).expand(self.layers, -1, -1).contiguous()
        c0 = torch.zeros_like(h0)
        steps = z.unsqueeze(1).expand(-1, x.shape[1], -1)  # z repeated at every step
        y, _ = self.decoder(steps, (h0, c0))
        return self.output(y)

    @torch.no_grad()
    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Squared error per step and feature (B, L, F); their mean is the chapter's window MSE."""
        self.eval()
        return (self(x) - x).pow(2)


def windows_view(series: torch.Tensor, length: int) -> torch.Tensor:
    """(T - L + 1, L, F) zero-copy view of every window of `series` (T, F)."""
    return series.unfold(0, length, 1).transpose(1, 2)


def train_chapter(
    model: ChapterLSTMAE, series: torch.Tensor, starts: torch.Tensor, settings: ChapterSettings,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """The chapter's loop: shuffled mini-batches of 32, MSE, Adam, a fixed number of epochs.

    `on_epoch_end(epochs_done)` lets a caller score a snapshot (the ablation's shorter
    budgets come from the same run: the shuffles of the first k epochs do not depend on
    the total); the model is put back into training mode afterwards."""
    torch.set_flush_denormal(True)
    gen = torch.Generator().manual_seed(settings.seed)
    if settings.max_train_windows and len(starts) > settings.max_train_windows:
        starts = starts[torch.randperm(len(starts), generator=gen)[: settings.max_train_windows]]
    view = windows_view(series, settings.window)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    loss_fn = nn.MSELoss()
    model.train()
    t0, last = time.perf_counter(), float("nan")
    for epoch in range(settings.epochs):
        order = starts[torch.randperm(len(starts), generator=gen)]
        total = 0.0
        for i in range(0, len(order), settings.batch_size):
            x = view[order[i : i + settings.batch_size]]
            loss = loss_fn(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
        last = total / len(order)
        if on_epoch_end is not None and epoch + 1 < settings.epochs:
            on_epoch_end(epoch + 1)
            model.train()
    model.eval()
    seconds = time.perf_counter() - t0
    return {"train_loss": last, "train_windows": len(starts), "fit_s": seconds}


class ChapterDetector:
    """fit(train rows) -> score(rows): one score per row, the chapter's last-row rule."""

    def __init__(self, settings: ChapterSettings = ChapterSettings()) -> None:
        self.settings = settings
        self.model: ChapterLSTMAE | None = None
        self.fit_info: dict[str, float] = {}

    def fit(self, train_rows: np.ndarray, starts: np.ndarray | None = None,
            on_epoch_end: Callable[[int], None] | None = None) -> ChapterDetector:
        """Train on windows of `train_rows` (T, F) at the settings' stride, or at `starts` if given."""
        s = self.settings
        series = torch.as_tensor(np.ascontiguousarray(train_rows), dtype=torch.float32)
        if starts is None:
            starts = np.arange(0, series.shape[0] - s.window + 1, s.stride)
        torch.manual_seed(s.seed)  # the initial weights are part of the seeded run
        self.model = ChapterLSTMAE(series.shape[1], s.hidden, s.layers, s.latent)
        self.fit_info = train_chapter(self.model, series, torch.as_tensor(starts, dtype=torch.long), s,
                                      on_epoch_end)
        return self

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("fit first")
        return self.model.element_scores(x)

    @torch.no_grad()
    def window_scores(self, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """MSE of every stride-1 window of `rows`, indexed by the window's first row.

        Batches of 256: fastest for this LSTM on one CPU thread (measured: 3.2k windows/s
        vs 2.3k at 1,024 and 2.0k at 4,096)."""
        series = torch.as_tensor(np.ascontiguousarray(rows), dtype=torch.float32)
        view = windows_view(series, self.settings.window)
        out = [self.element_scores(view[i : i + batch_size]).mean(dim=(1, 2))
               for i in range(0, view.shape[0], batch_size)]
        return torch.cat(out).numpy().astype(np.float64)

    def score(self, rows: np.ndarray) -> np.ndarray:
        """One score per row: the MSE of the window ending on it; the first L-1 rows back-filled."""
        ws = self.window_scores(rows)
        lead = self.settings.window - 1
        return np.concatenate([np.full(lead, ws[0]), ws])


# -- PyOD ------------------------------------------------------------------------------


def pyod_detectors(train: np.ndarray, seed: int = 0) -> dict[str, Callable[[], Any]]:
    """PyOD's detectors with their documented defaults (verbose off, seeded where they take a seed).

    Why defaults: the reference is "good off-the-shelf detectors", not tuned ones.
    KNN/LOF use PyOD's defaults too (k = 5 / 20 neighbours). One exception: PCA
    keeps only as many components as the train matrix has rank, because PyOD
    divides by each component's variance, and a collinear feature (ODDS cardio
    has one: a singular value 1e-7 of the largest) makes that variance ~0 and
    every score infinite.
    """
    singular = np.linalg.svd(train - train.mean(axis=0), compute_uv=False)
    rank = max(1, int((singular > 1e-4 * singular[0]).sum()))  # rows went through float32 scaling
    from pyod.models.auto_encoder import AutoEncoder
    from pyod.models.ecod import ECOD
    from pyod.models.hbos import HBOS
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF
    from pyod.models.pca import PCA
    from pyod.models.vae import VAE

    return {
        "PCA": lambda: PCA(n_components=rank, random_state=seed),
        "AutoEncoder": lambda: AutoEncoder(verbose=0, random_state=seed, device="cpu"),
        "VAE": lambda: VAE(verbose=0, random_state=seed, device="cpu"),
        "IForest": lambda: IForest(random_state=seed, n_jobs=1),
        "KNN": lambda: KNN(n_jobs=1),
        "LOF": lambda: LOF(n_jobs=1),
        "ECOD": lambda: ECOD(),
        "HBOS": lambda: HBOS(),
    }


def finite(scores: np.ndarray) -> np.ndarray:
    """float64 scores with NaN / +-inf clipped to the float64 range (ties at the top)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.nan_to_num(scores, nan=np.finfo(np.float64).max, posinf=np.finfo(np.float64).max,
                         neginf=np.finfo(np.float64).min)


# -- the runner's rows -----------------------------------------------------------------


@dataclass(frozen=True)
class BaselineSeries:
    """One benchmarked series as the runner sees it, rows sorted by entity, timestamp."""

    scaled: np.ndarray  # (T, F) the pipeline's scaled rows (scaler fitted on train)
    shipped: np.ndarray  # (T, F) the rows as loaded, before scaling (the chapter's input)
    entity: np.ndarray  # (T,) entity codes; windows never cross an entity
    split: np.ndarray  # (T,) "train" / "validation" / "score" / other
    labels: np.ndarray  # (T,) 0/1
    window: int  # the runner's window (VUS-PR buffer; 1 = a table: no chapter row)
    target_fpr: float = 0.05
    train_on_normal_only: bool = True

    def mask(self, split: str) -> np.ndarray:
        return self.split == split

    @property
    def train_rows(self) -> np.ndarray:
        keep = self.mask("train")
        if self.train_on_normal_only:
            keep &= self.labels == 0
        return keep


def chapter_input(series: BaselineSeries) -> np.ndarray:
    """Rows in [0, 1] as the chapter assumes: as shipped if train already is, else min-max on train."""
    train = series.shipped[series.mask("train")]
    if train.size and train.min() >= 0.0 and train.max() <= 1.0:
        return series.shipped
    low, high = train.min(axis=0), train.max(axis=0)
    return (series.shipped - low) / np.where(high > low, high - low, 1.0)


def chapter_scores(series: BaselineSeries, settings: ChapterSettings) -> tuple[np.ndarray, float]:
    """(scores of the judged rows, fit seconds): trained on train windows of each entity (stride
    10), scored entity by entity with stride-1 windows (each row: the window ending on it),
    starting one window before the first validation / score row."""
    x = chapter_input(series).astype(np.float32)
    train = series.mask("train")
    starts: list[np.ndarray] = []
    blocks = np.flatnonzero(np.diff(series.entity, prepend=series.entity[:1] - 1) != 0)
    bounds = list(zip(blocks, [*blocks[1:], len(x)], strict=True))
    for lo, hi in bounds:  # train windows: inside one entity's train rows
        rows = np.flatnonzero(train[lo:hi]) + lo
        if len(rows) >= settings.window:
            first, last = rows[0], rows[-1]
            starts.append(np.arange(first, last - settings.window + 2, settings.stride))
    if not starts:
        raise ValueError(f"no entity has {settings.window} train rows for the chapter's windows")
    detector = ChapterDetector(settings).fit(x, np.concatenate(starts))
    scores = np.full(len(x), np.nan)
    judged = series.mask("validation") | series.mask("score")
    for lo, hi in bounds:  # from one window before the block's first judged row (its context)
        first = np.flatnonzero(judged[lo:hi])
        start = lo if not len(first) else max(lo, lo + int(first[0]) - settings.window + 1)
        if hi - start >= settings.window:
            scores[start:hi] = detector.score(x[start:hi])
    return scores, detector.fit_info["fit_s"]


def _metrics(series: BaselineSeries, scores: np.ndarray) -> dict[str, float]:
    """Validation PR-AUC (what a pick sees) and score-split metrics at a conformal threshold."""
    val, score = series.mask("validation"), series.mask("score")
    scores = finite(scores)
    normal_val = scores[val & (series.labels == 0)]
    threshold = conformal_fpr_threshold(normal_val, series.target_fpr)
    out = evaluate(series.labels[score], scores[score], threshold, series.window)
    out["fpr"] = float(np.mean(scores[score & (series.labels == 0)] > threshold))
    return {"val_pr_auc": pr_auc(series.labels[val], scores[val]), **out}


def run_baselines(
    series: BaselineSeries, pyod: tuple[str, ...] = PYOD_RUNNER,
    chapter: ChapterSettings | None = ChapterSettings(), seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per baseline (`family`, `val_pr_auc`, score-split metrics, `fit_s`, `note`), then
    the PyOD validation pick and the baselines' rank-mean. A detector that fails gets a row
    whose note says why; the comparison goes on."""
    rows: list[dict[str, Any]] = []
    scored: dict[str, np.ndarray] = {}
    train = series.scaled[series.train_rows].astype(np.float64)
    keep = train.std(axis=0) > 1e-12  # constant in train: PyOD's PCA divides by its variance
    makers = pyod_detectors(train[:, keep], seed) if pyod else {}
    judged = series.mask("validation") | series.mask("score")
    for name in pyod:
        started = time.perf_counter()
        try:
            model = makers[name]()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(train[:, keep])
                scores = np.full(len(series.labels), np.nan)  # only judged rows are scored
                scores[judged] = model.decision_function(series.scaled[judged][:, keep])
        except Exception as err:  # noqa: BLE001 - one detector's failure must not end the run
            rows.append({"family": f"pyod {name}", "role": "baseline", "note": f"failed: {err}"})
            continue
        scored[f"pyod {name}"] = scores
        rows.append({"family": f"pyod {name}", "role": "baseline", "note": "",
                     "fit_s": time.perf_counter() - started, **_metrics(series, scores)})
        log.info("baseline pyod %s: fit + score %.1f s, score PR-AUC %.3f", name,
                 rows[-1]["fit_s"], rows[-1]["pr_auc"])
    if chapter is not None and series.window > 1:
        try:
            scores, fit_s = chapter_scores(series, chapter)
            scored[CHAPTER] = scores
            rows.append({"family": CHAPTER, "role": "baseline", "note": "", "fit_s": fit_s,
                         **_metrics(series, scores)})
            log.info("baseline %s: fit %.1f s (%d epochs), score PR-AUC %.3f", CHAPTER, fit_s,
                     chapter.epochs, rows[-1]["pr_auc"])
        except Exception as err:  # noqa: BLE001
            rows.append({"family": CHAPTER, "role": "baseline", "note": f"failed: {err}"})
    return rows + summaries(series, rows, scored)


def summaries(series: BaselineSeries, rows: list[dict[str, Any]],
              scored: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """PyOD's validation pick and the rank-mean of every baseline that scored."""
    out: list[dict[str, Any]] = []
    pyod = [r for r in rows if r["family"].startswith("pyod ") and not r["note"]
            and np.isfinite(r["val_pr_auc"])]
    if pyod:
        best = max(pyod, key=lambda r: r["val_pr_auc"])
        out.append({**best, "family": PYOD_PICK, "role": "selection",
                    "picked": best["family"].removeprefix("pyod ")})
    if len(scored) > 1:
        judged = series.mask("validation") | series.mask("score")
        ranks = np.zeros(len(series.labels))
        for scores in scored.values():
            ranks[judged] += rankdata(finite(scores[judged])) / judged.sum()
        ranks /= len(scored)
        out.append({"family": RANK_MEAN, "role": "selection", "note": f"{len(scored)} baselines",
                    "picked": "", **_metrics(series, ranks)})
    return out
