"""Issue 10's ablation: one change at a time from the chapter LSTM-AE and from nightowl's families.

Why: on SMD machine-2-1's score split the chapter's LSTM autoencoder (as written)
reaches PR-AUC ~0.55 and nightowl's champion 0.30. The two differ in many places at
once (scaling, window, training stride, how window errors become row scores,
per-feature error normalisation, training budget, architecture). This runner starts
from each configuration and changes ONE thing per arm, trains with equal seeds per
arm, and reports PR-AUC and VUS-PR on BOTH the validation slice and the score split,
on every dev series, so that defaults can be chosen on validation across all series
and their score-split numbers read alongside (never the other way round).

What is shared with production (so results transfer): the loaders and their splits
(benchmarks/dev_series.py), the scaler (`tasks.data.scale.fit_scaler`, fitted on train rows),
the families (`models.registry.build_model`), the engine (`models.engine.fit`,
`WindowSet`, early stopping on a 10% holdout), `tasks.scoring.feature_error_scale` and
the metrics (`tasks.evaluation.metrics.pr_auc`, `vus_pr`). What is this script's own: the
chapter's model and loop (benchmarks/chapter_lstm_ae.py) and the row rules below
(production has only `mean_elem`).

Row rules (how element errors e[w, step, f] of stride-1 windows become row scores;
with normalisation every feature's error is first divided by s_f, its mean row
contribution on normal train rows, exactly as `feature_error_scale` computes it):

- mean_elem   nightowl: row contribution of f = mean of e over every window covering
              the row at the row's step; row score = sum over f
- last_window the chapter: window score (mean over steps, summed/averaged over f)
              given to the window's last row
- mean_window mean of the window scores of every window covering the row
- max_window  max of the window scores of every window covering the row
- last_step   the element errors of the window's last step only, summed over f

Rows scored: every row of the series (train rows give the feature scale s_f and the
ensemble normalisers fitted on normal train rows, as calibration does); windows slide
with stride 1 over the whole series, so validation and score rows get context from the
rows before them.

    cd /work/wt-detect && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 \
        /work/main/.venv/bin/python benchmarks/ablation.py --plan full --seeds 0,1 \
        --out benchmarks/results/ablation_runs.csv
    /work/main/.venv/bin/python benchmarks/ablation.py --report benchmarks/results/ablation_runs.csv
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.chapter_lstm_ae import ChapterDetector, ChapterSettings  # noqa: E402
from benchmarks.dev_series import DEV_SERIES, SCALINGS, Series, load_series  # noqa: E402
from models.engine import EngineSettings, WindowSet, fit  # noqa: E402
from models.registry import build_model  # noqa: E402
from tasks.evaluation.metrics import pr_auc, vus_pr  # noqa: E402
from tasks.evaluation.normalise import p_values  # noqa: E402
from tasks.scoring import feature_error_scale  # noqa: E402

log = logging.getLogger("ablation")

TRAIN_TAIL: int | None = None  # train rows scored for s_f and train-fitted normalisers (None: all,
# as calibration does; the last 3,000 rows only moved SMD PCA's score PR-AUC 0.316 -> 0.340)
VUS_BUFFER = 100  # fixed for every arm: VUS-PR with a window-dependent buffer would not compare
RULES = ("mean_elem", "last_window", "mean_window", "max_window", "last_step")
Scorer = Callable[[torch.Tensor], torch.Tensor]


# -- configurations and arms --------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Everything that decides one trained model, plus the row rule its headline uses."""

    family: str  # "chapter" (benchmarks/chapter_lstm_ae.py) or a nightowl family
    scaling: str
    window: int
    stride: int  # training-window stride (scoring always slides by 1)
    epochs: int
    max_train_windows: int | None
    batch_size: int
    rule: str
    norm: bool

    def train_key(self) -> tuple:
        """Fields that change the trained model (rule and norm are applied after scoring)."""
        return (self.family, self.scaling, self.window, self.stride, self.epochs,
                self.max_train_windows, self.batch_size)


def base_config(family: str, s: Series) -> Config:
    """The chapter as written, or nightowl's pipeline defaults for this kind of series."""
    table = s.is_table
    if family == "chapter":
        return Config("chapter", "none", 1 if table else 50, 1 if table else 10, 20, None, 32,
                      "last_window", False)
    scaling = "robust" if s.kind in ("smd", "asd") else "standard"  # the loaders' defaults
    return Config(family, scaling, s.window, 1, 20, 20000, 256, "mean_elem", True)


def arms_for(family: str, s: Series, plan: str) -> list[tuple[str, Config]]:
    """(arm name, config): the base first, then one change per arm.

    The arm list is sized to the one-core budget (see the module docstring): every arm
    on SMD machine-2-1 ("full"), the informative subset on the other dev series ("dev").
    Rule and normalisation arms cost nothing (every fit is scored once under all rules)."""
    base = base_config(family, s)
    full = plan == "full" and s.key == "smd:machine-2-1"
    if family == "lstm_ae" and not full and plan != "dev+lstm":
        return []  # 75 s a fit on one ASD machine: machine-2-1 only
    arms: list[tuple[str, Config]] = [("base", base)]

    def add(name: str, **change: Any) -> None:
        cfg = replace(base, **change)
        if cfg != base and all(cfg != c for _, c in arms):
            arms.append((name, cfg))

    if not s.is_table:  # a window of one row: every rule gives the same scores
        for rule in RULES:
            add(f"rule={rule}", rule=rule)
    if s.x.shape[1] > 1:  # one feature: normalisation is a constant factor
        add(f"norm={'off' if base.norm else 'on'}", norm=not base.norm)
    pipeline_scaling = "robust" if s.kind in ("smd", "asd") else "standard"
    if family == "chapter":
        add(f"scaling={pipeline_scaling}", scaling=pipeline_scaling)
        if full:
            add("window=32", window=32)
            # stride 1 at the chapter's number of window passes (10x the windows, 1/10 the epochs)
            add("stride=1 (equal passes)", stride=1, epochs=2)
            add("epochs=10", epochs=10)  # a snapshot of the base run: no extra training
        return arms
    if family == "lstm_ae":
        add("scaling=none", scaling="none")
        if full:
            add("stride=10", stride=10)
            # not one change: every chapter setting at once, so only the architecture (and
            # the engine's early stopping on a 10% holdout) differs from the chapter's model
            add("chapter settings", scaling="none", window=50, stride=10, batch_size=32,
                max_train_windows=None, rule="last_window", norm=False)
        return arms
    for scaling in SCALINGS:
        add(f"scaling={scaling}", scaling=scaling)
    if s.is_table:
        return arms
    for w in (16, 32, 50, 100) if full and family == "dense_ae" else (16, 32, 50):
        add(f"window={w}", window=w)
    add("stride=10", stride=10)
    if full and family == "dense_ae":
        add("epochs=5", epochs=5)
        add("max_train_windows=5000", max_train_windows=5000)
    return arms


# -- training -----------------------------------------------------------------------------


def train_starts(s: Series, window: int, stride: int) -> np.ndarray:
    """Windows wholly inside the train split, label-free when the split says so, on the stride."""
    n_train = int(s.mask("train").sum())
    if not s.mask("train")[:n_train].all():
        raise ValueError(f"{s.key}: the train split is not the leading block of rows")
    starts = np.arange(0, n_train - window + 1, stride)
    if s.normal_train_only:
        pos = np.concatenate(([0], np.cumsum(s.labels[:n_train], dtype=np.int64)))
        starts = starts[(pos[starts + window] - pos[starts]) == 0]
    return starts


def train(cfg: Config, s: Series, x: np.ndarray, seed: int,
          on_epoch_end: Callable[[int, Scorer], None] | None = None) -> tuple[Scorer, dict[str, float]]:
    """Fit one model on train windows of the scaled rows `x`; returns its element scorer.

    `on_epoch_end(epochs_done, scorer)` (chapter only) scores snapshots of the same run."""
    starts = train_starts(s, cfg.window, cfg.stride)
    if cfg.family == "chapter":
        settings = ChapterSettings(window=cfg.window, stride=cfg.stride, epochs=cfg.epochs,
                                   batch_size=cfg.batch_size, seed=seed,
                                   max_train_windows=cfg.max_train_windows)
        det = ChapterDetector(settings)
        hook = (lambda done: on_epoch_end(done, det.element_scores)) if on_epoch_end else None
        det.fit(x, starts, hook)
        return det.element_scores, {"fit_s": det.fit_info["fit_s"], "epochs_run": cfg.epochs,
                                    "train_windows": det.fit_info["train_windows"]}
    series = torch.from_numpy(np.ascontiguousarray(x))
    windows = WindowSet(series, torch.from_numpy(starts), cfg.window)
    torch.manual_seed(seed)  # as tasks/train.py: the initial weights belong to the seeded run
    model = build_model(cfg.family, x.shape[1], cfg.window, {})
    settings = EngineSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=1e-3, seed=seed,
                              device="cpu", amp=False, max_train_windows=cfg.max_train_windows)
    result = fit(model, windows, settings)
    model.eval()

    @torch.no_grad()
    def scorer(batch: torch.Tensor) -> torch.Tensor:
        return model.element_scores(batch)

    return scorer, {"fit_s": result.seconds, "train_windows": result.train_windows,
                    "epochs_run": result.epochs_run}


# -- scoring: element errors -> every row rule ---------------------------------------------


@dataclass
class Summary:
    """What every row rule needs from one pass of stride-1 windows over rows [first, T)."""

    first_start: int
    window: int
    acc: np.ndarray  # (T, F) sum of element errors per row and feature
    cover: np.ndarray  # (T,) windows covering each row
    window_mean: np.ndarray  # (W, F) per window: mean over steps of e
    last_step: np.ndarray  # (W, F) per window: e at its last step


@torch.no_grad()
def summarise(scorer: Scorer, x: np.ndarray, window: int, first_start: int,
              batch: int = 256) -> Summary:
    series = torch.from_numpy(np.ascontiguousarray(x))
    t, f = series.shape
    view = series.unfold(0, window, 1).transpose(1, 2)
    starts = torch.arange(first_start, t - window + 1)
    acc = torch.zeros(t, f, dtype=torch.float64)
    cover = torch.zeros(t, dtype=torch.float64)
    wmean = torch.empty(len(starts), f, dtype=torch.float64)
    wlast = torch.empty(len(starts), f, dtype=torch.float64)
    steps = torch.arange(window)
    for i in range(0, len(starts), batch):
        st = starts[i : i + batch]
        e = scorer(view[st]).double()
        rows = (st[:, None] + steps).reshape(-1)
        acc.index_add_(0, rows, e.reshape(-1, f))
        cover.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
        wmean[i : i + len(st)] = e.mean(1)
        wlast[i : i + len(st)] = e[:, -1, :]
    return Summary(first_start, window, acc.numpy(), cover.numpy(), wmean.numpy(), wlast.numpy())


def feature_scale(summary: Summary, ref_rows: np.ndarray) -> np.ndarray:
    """s_f of the pipeline: mean row contribution per feature on normal train rows."""
    contrib = summary.acc[ref_rows] / np.maximum(summary.cover[ref_rows], 1)[:, None]
    return feature_error_scale(contrib)


def _place(values: np.ndarray, first: int, n: int, offset: int) -> np.ndarray:
    out = np.full(n, np.nan)
    out[first + offset : first + offset + len(values)] = values
    return out


def _sliding(ws: np.ndarray, window: int, how: str) -> np.ndarray:
    """Per row: mean or max of the scores of the windows covering it (starts t-L+1..t)."""
    pad = np.full(window - 1, np.nan)
    padded = np.concatenate([pad, ws, pad])
    view = np.lib.stride_tricks.sliding_window_view(padded, window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(view, axis=1) if how == "max" else np.nanmean(view, axis=1)


def window_rule(ws: np.ndarray, first: int, window: int, n: int, rule: str) -> np.ndarray:
    """Row scores from one score per stride-1 window starting at rows first, first+1, ..."""
    if rule == "last_window":
        return _place(ws, first, n, window - 1)
    if rule in ("mean_window", "max_window"):
        return _place(_sliding(ws, window, rule[:-7]), first, n, 0)
    raise ValueError(rule)


def row_scores(summary: Summary, rule: str, scale: np.ndarray) -> np.ndarray:
    """(T,) row scores under `rule` with per-feature divisor `scale` (ones: no normalisation)."""
    n = summary.acc.shape[0]
    if rule == "mean_elem":
        with np.errstate(invalid="ignore", divide="ignore"):
            contrib = summary.acc / summary.cover[:, None]
        out = (contrib / scale).sum(axis=1)
        out[summary.cover == 0] = np.nan
        return out
    if rule == "last_step":
        return _place((summary.last_step / scale).sum(axis=1), summary.first_start, n,
                      summary.window - 1)
    ws = (summary.window_mean / scale).sum(axis=1)
    return window_rule(ws, summary.first_start, summary.window, n, rule)


# -- metrics ------------------------------------------------------------------------------


def split_metrics(s: Series, scores: np.ndarray) -> dict[str, float]:
    """PR-AUC and VUS-PR on validation and score rows (NaN scores would be a bug: they raise)."""
    out = {}
    for part, short in (("validation", "val"), ("score", "score")):
        m = s.mask(part)
        y, sc = s.labels[m], scores[m]
        if not np.isfinite(sc).all():
            raise ValueError(f"{s.key}: {int((~np.isfinite(sc)).sum())} non-finite {part} scores")
        out[f"{short}_pr_auc"] = pr_auc(y, sc)
        out[f"{short}_vus_pr"] = float("nan") if s.is_table else vus_pr(y, sc, max_buffer=VUS_BUFFER)
    return out


# -- one fit -> every (rule, norm) variant ------------------------------------------------


@dataclass
class FitOutput:
    rows: list[dict[str, Any]]
    base_scores: np.ndarray  # (T,) row scores under the config's own rule / norm


def scored_block(s: Series, window: int) -> tuple[int, np.ndarray]:
    """First window start of the scored block, and the normal train rows used as reference."""
    n_train = int(s.mask("train").sum())
    tail = 0 if TRAIN_TAIL is None else max(0, n_train - TRAIN_TAIL)
    ref = np.zeros(len(s.labels), dtype=bool)
    ref[tail:n_train] = True
    ref &= s.labels == 0
    return max(0, tail - (window - 1)), ref


def variants(cfg: Config, s: Series, x: np.ndarray, summary: Summary) -> FitOutput:
    """Every (rule, norm) variant of one scored model; `base_scores` follows the config."""
    _, ref = scored_block(s, cfg.window)
    scales = {True: feature_scale(summary, ref), False: np.ones(x.shape[1])}
    rows, base = [], None
    single = cfg.window == 1  # a window of one row: every rule is the same
    rules = ("mean_elem",) if single else RULES
    for rule in rules:
        for norm in (False, True):
            if norm and x.shape[1] == 1:
                continue  # one feature: normalisation is a constant factor
            scores = row_scores(summary, rule, scales[norm])
            if rule == headline_rule(cfg) and norm == headline_norm(cfg, x):
                base = scores
            rows.append({"rule": rule, "norm": norm, **split_metrics(s, scores)})
    assert base is not None
    return FitOutput(rows, base)


def headline_rule(cfg: Config) -> str:
    return "mean_elem" if cfg.window == 1 else cfg.rule


def headline_norm(cfg: Config, x: np.ndarray) -> bool:
    return cfg.norm and x.shape[1] > 1


def run_fit(cfg: Config, s: Series, x: np.ndarray, seed: int,
            snapshots: tuple[int, ...] = ()) -> dict[int, FitOutput]:
    """Train, score every row once, derive every rule / norm variant. Keyed by epochs:
    the final model under cfg.epochs, chapter snapshots under their epoch counts."""
    first, _ = scored_block(s, cfg.window)
    taken: dict[int, tuple[Summary, float]] = {}

    def snapshot(done: int, scorer: Scorer) -> None:
        if done in snapshots:
            t0 = time.perf_counter()
            taken[done] = (summarise(scorer, x, cfg.window, first), time.perf_counter() - t0)

    t_fit = time.perf_counter()
    scorer, info = train(cfg, s, x, seed, snapshot if snapshots else None)
    t0 = time.perf_counter()
    summary = summarise(scorer, x, cfg.window, first)
    score_s = time.perf_counter() - t0
    out = {cfg.epochs: variants(cfg, s, x, summary)}
    snapshot_s = sum(v[1] for v in taken.values())
    info = {**info, "fit_s": info["fit_s"] - snapshot_s}  # snapshot scoring ran inside the loop
    for r in out[cfg.epochs].rows:
        r.update(info, score_s=score_s)
    for done, (summ, sec) in taken.items():
        out[done] = variants(replace(cfg, epochs=done), s, x, summ)
        for r in out[done].rows:  # fit time of a snapshot: its share of the run's epochs
            r.update(info, epochs_run=done, score_s=sec,
                     fit_s=(t0 - t_fit - snapshot_s) * done / cfg.epochs)
    return out


# -- ensembles ----------------------------------------------------------------------------


def combine(scores: dict[str, np.ndarray], s: Series, how: str, ref: str) -> np.ndarray:
    """One row score from several families' row scores; normalisers fitted on normal rows of
    `ref` ("train": the scored train tail; "validation": validation rows labelled normal).

    rank_mean is transductive (each split ranked within itself; labels never read)."""
    n = len(s.labels)
    if ref == "train":
        first, ref_rows = scored_block(s, 1)
    else:
        ref_rows = s.mask("validation") & (s.labels == 0)
    parts = []
    for sc in scores.values():
        if how == "rank_mean":
            r = np.full(n, np.nan)
            for part in ("validation", "score"):
                m = s.mask(part)
                r[m] = _rank01(sc[m])
            parts.append(r)
            continue
        refv = np.sort(sc[ref_rows & np.isfinite(sc)])
        if how == "pvalue_mean":
            parts.append(-p_values(sc, refv))
        elif how == "logp_mean":
            parts.append(-np.log(p_values(sc, refv)))
        elif how == "robust_z_mean":
            med = np.median(refv)
            iqr = np.subtract(*np.percentile(refv, [75, 25]))
            parts.append((sc - med) / max(iqr, 1e-12 * max(abs(med), 1.0), 1e-12))
        else:
            raise ValueError(how)
    return np.mean(parts, axis=0)


def _rank01(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(v, method="average") / len(v)


ENSEMBLE_SETS = {
    "nightowl4": ("lstm_ae", "dense_ae", "usad", "pca"),
    "cheap3": ("dense_ae", "usad", "pca"),
    "cheap3+chapter": ("chapter", "dense_ae", "usad", "pca"),
    "dense_ae+usad": ("dense_ae", "usad"),
    "all5": ("chapter", "lstm_ae", "dense_ae", "usad", "pca"),
}
COMBINERS = (("rank_mean", "split"), ("pvalue_mean", "train"), ("pvalue_mean", "validation"),
             ("logp_mean", "validation"), ("robust_z_mean", "train"),
             ("robust_z_mean", "validation"))


def ensemble_rows(s: Series, seed: int, base: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    out = []
    for set_name, members in ENSEMBLE_SETS.items():
        have = {m: base[m] for m in members if m in base}
        if len(have) < len(members):
            continue
        for how, ref in COMBINERS:
            sc = combine(have, s, how, ref)
            out.append({"series": s.key, "seed": seed, "ensemble": set_name, "combiner": how,
                        "reference": ref, **split_metrics(s, sc)})
    return out


# -- PyOD KNN on rows vs windows ----------------------------------------------------------


def knn_rows(s: Series) -> list[dict[str, Any]]:
    """PyOD KNN (defaults: k=5, largest) on scaled rows and on flattened windows."""
    from pyod.models.knn import KNN

    out = []
    base_scaling = base_config("dense_ae", s).scaling
    for scaling in dict.fromkeys(("none", base_scaling)):
        x = s.scaled(scaling).astype(np.float64)
        train_ok = s.mask("train") & ((s.labels == 0) | (not s.normal_train_only))
        t0 = time.perf_counter()
        det = KNN(n_jobs=1).fit(x[train_ok])
        sc = np.full(len(x), np.nan)
        rest = ~s.mask("train")
        sc[rest] = det.decision_function(x[rest])
        out.append({"series": s.key, "detector": "KNN rows", "scaling": scaling, "rule": "row",
                    "fit_s": time.perf_counter() - t0, **split_metrics(s, sc)})
        if s.is_table:
            continue
        w = s.window
        starts = train_starts(s, w, 1)
        if len(starts) > 10000:  # cap: every k-th window, k the smallest stride giving <= 10k
            starts = starts[:: math.ceil(len(starts) / 10000)]
        flat = np.lib.stride_tricks.sliding_window_view(x, w, axis=0)  # (T-w+1, F, w)
        t0 = time.perf_counter()
        det = KNN(n_jobs=1).fit(flat[starts].reshape(len(starts), -1))
        first = max(0, int(s.mask("train").sum()) - (w - 1))  # validation and score rows only
        ws = det.decision_function(flat[first:].reshape(len(flat) - first, -1))
        fit_s = time.perf_counter() - t0
        for rule in ("last_window", "mean_window", "max_window"):
            sc = window_rule(ws, first, w, len(s.labels), rule)
            out.append({"series": s.key, "detector": f"KNN windows L={w}", "scaling": scaling,
                        "rule": rule, "fit_s": fit_s, "train_windows": len(starts),
                        **split_metrics(s, sc)})
    return out


# -- the run ------------------------------------------------------------------------------


def run(plan: str, smd_seeds: list[int], dev_seeds: list[int], families: list[str],
        series_keys: list[str] | None, out: Path, knn: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    ens_path = out.with_name(out.stem + "_ensembles.csv")
    knn_path = out.with_name(out.stem + "_knn.csv")
    results: list[dict[str, Any]] = []
    ensembles: list[dict[str, Any]] = []
    knn_results: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for kind, name in DEV_SERIES:
        s = load_series(kind, name)
        if series_keys and s.key not in series_keys:
            continue
        log.info("series %s: %s", s.key, {p: int(s.mask(p).sum()) for p in ("train", "validation", "score")})
        seeds = smd_seeds if s.key == "smd:machine-2-1" else dev_seeds
        scaled: dict[str, np.ndarray] = {}
        base_scores: dict[int, dict[str, np.ndarray]] = {seed: {} for seed in seeds}
        for family in families:
            arms = arms_for(family, s, plan)
            done: dict[tuple, list[dict[str, Any]]] = {}
            for arm, cfg in arms:
                key = cfg.train_key()
                if key not in done:
                    # shorter chapter budgets of this config: snapshots of the same run
                    shorter = {c.epochs: c.train_key() for _, c in arms if c.family == "chapter"
                               and c.epochs < cfg.epochs and c.train_key() not in done
                               and replace(c, epochs=cfg.epochs).train_key() == key}
                    for k in (key, *shorter.values()):
                        done[k] = []
                    x = scaled.setdefault(cfg.scaling, s.scaled(cfg.scaling))
                    for seed in seeds:
                        t0 = time.perf_counter()
                        fits = run_fit(cfg, s, x, seed, tuple(shorter))
                        for epochs, fo in fits.items():
                            k = key if epochs == cfg.epochs else shorter[epochs]
                            for r in fo.rows:
                                r.update(series=s.key, seed=seed, **{
                                    f"cfg_{f}": v for f, v in asdict(replace(cfg, epochs=epochs)).items()
                                    if f not in ("rule", "norm")})
                            done[k].extend(fo.rows)
                        if arm == "base":
                            base_scores[seed][family] = fits[cfg.epochs].base_scores
                        head = next(r for r in fits[cfg.epochs].rows if r["rule"] == headline_rule(cfg)
                                    and r["norm"] == headline_norm(cfg, x))
                        log.info("%s %s %s seed %d: val PR %.3f score PR %.3f (fit %.1fs score %.1fs, %.0fs)",
                                 s.key, family, arm, seed, head["val_pr_auc"], head["score_pr_auc"],
                                 head["fit_s"], head["score_s"], time.perf_counter() - t0)
                for r in done[key]:
                    results.append({**r, "base": family, "arm": arm, "arm_rule": cfg.rule,
                                    "arm_norm": cfg.norm})
            pl.DataFrame(results, infer_schema_length=None).write_csv(out)
        for seed in seeds:
            ensembles += ensemble_rows(s, seed, base_scores[seed])
            for fam, sc in base_scores[seed].items():
                ensembles.append({"series": s.key, "seed": seed, "ensemble": f"single:{fam}",
                                  "combiner": "", "reference": "", **split_metrics(s, sc)})
        if ensembles:
            pl.DataFrame(ensembles, infer_schema_length=None).write_csv(ens_path)
        if knn:
            knn_results += knn_rows(s)
            pl.DataFrame(knn_results, infer_schema_length=None).write_csv(knn_path)
        log.info("series %s done at %.0fs wall, %.0fs CPU", s.key, time.perf_counter() - t_all,
                 time.process_time())
    log.info("all done in %.0fs wall, %.0fs CPU -> %s", time.perf_counter() - t_all,
             time.process_time(), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="full", choices=["full", "dev", "dev+lstm"],
                        help="full: every arm on machine-2-1, the dev subset elsewhere")
    parser.add_argument("--seeds", default="0,1", help="seeds on SMD machine-2-1")
    parser.add_argument("--dev-seeds", default="0", help="seeds on the other dev series")
    parser.add_argument("--families", default="chapter,lstm_ae,dense_ae,usad,pca")
    parser.add_argument("--series", default="", help="comma-separated keys, e.g. smd:machine-2-1")
    parser.add_argument("--no-knn", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ablation_runs.csv"))
    parser.add_argument("--report", type=Path, default=None,
                        help="only print the Markdown tables of an earlier run's CSV")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("tasks.evaluation.loaders").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    run(args.plan, [int(v) for v in args.seeds.split(",")],
        [int(v) for v in args.dev_seeds.split(",")], [f for f in args.families.split(",") if f],
        [k for k in args.series.split(",") if k] or None, args.out, not args.no_knn)



# -- report: the CSVs -> Markdown tables ----------------------------------------------------

KNOBS = ("scaling", "window", "stride", "epochs", "max_train_windows", "batch_size", "rule", "norm")


def _headline(runs: pl.DataFrame) -> pl.DataFrame:
    """Each arm's own variant: the rule / norm its config names (windows of 1 and single
    features collapse to mean_elem / no normalisation)."""
    rule = pl.when(pl.col("cfg_window") == 1).then(pl.lit("mean_elem")).otherwise(pl.col("arm_rule"))
    return runs.filter((pl.col("rule") == rule) & (pl.col("norm") == pl.col("eff_norm")))


def _with_eff_norm(runs: pl.DataFrame) -> pl.DataFrame:
    multi = runs.group_by("series").agg(pl.col("norm").max().alias("multi"))
    return runs.join(multi, on="series").with_columns(
        (pl.col("arm_norm") & pl.col("multi")).alias("eff_norm"))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _md(df: pl.DataFrame, digits: int = 3) -> str:
    head = "| " + " | ".join(df.columns) + " |\n|" + "|".join("---" for _ in df.columns) + "|\n"
    return head + "\n".join("| " + " | ".join(_fmt(v, digits) for v in row) + " |"
                            for row in df.iter_rows()) + "\n"


METRICS = ("val_pr_auc", "score_pr_auc", "val_vus_pr", "score_vus_pr")


def smd_table(runs: pl.DataFrame, series: str = "smd:machine-2-1") -> str:
    """Every arm on one series: mean and sd over seeds, deltas against the base of its family."""
    h = _headline(runs.filter(pl.col("series") == series))
    agg = h.group_by("base", "arm", maintain_order=True).agg(
        pl.len().alias("seeds"),
        *(pl.col(m).fill_nan(None).mean().alias(m) for m in METRICS),
        pl.col("val_pr_auc").std().alias("val_sd"), pl.col("score_pr_auc").std().alias("score_sd"),
        pl.col("fit_s").mean().alias("fit_s"), pl.col("score_s").mean().alias("score_s"))
    base = agg.filter(pl.col("arm") == "base").select(
        "base", pl.col("val_pr_auc").alias("_bv"), pl.col("score_pr_auc").alias("_bs"))
    agg = agg.join(base, on="base").with_columns(
        (pl.col("val_pr_auc") - pl.col("_bv")).alias("d_val"),
        (pl.col("score_pr_auc") - pl.col("_bs")).alias("d_score")).drop("_bv", "_bs")
    out = agg.select("base", "arm", "seeds", pl.col("val_pr_auc").alias("val PR"),
                     pl.col("val_sd").alias("±"), pl.col("d_val").alias("Δval"),
                     pl.col("score_pr_auc").alias("score PR"), pl.col("score_sd").alias("± "),
                     pl.col("d_score").alias("Δscore"), pl.col("val_vus_pr").alias("val VUS"),
                     pl.col("score_vus_pr").alias("score VUS"), pl.col("fit_s").alias("fit s"),
                     pl.col("score_s").alias("score s"))
    return _md(out)


def rule_norm_table(runs: pl.DataFrame, series: str | None = None) -> str:
    """Every (rule, norm) variant of each family's base fits (free: one scoring pass)."""
    b = runs.filter((pl.col("arm") == "base") & (pl.col("cfg_window") > 1))
    if series:
        b = b.filter(pl.col("series") == series)
    per_series = b.group_by("base", "rule", "norm", "series").agg(*(pl.col(m).fill_nan(None).mean() for m in METRICS))
    agg = per_series.group_by("base", "rule", "norm").agg(
        pl.len().alias("series"), *(pl.col(m).fill_nan(None).mean() for m in METRICS)).sort("base", "rule", "norm")
    return _md(agg)


def knob_table(runs: pl.DataFrame) -> pl.DataFrame:
    """Per family, knob and value: seed-mean per series, then the mean over series.

    A row counts for a knob's value when it differs from its series' base in that knob
    only (the base counts for every knob at its own value), so NAB's base (standard
    scaling) and SMD's arm "scaling=standard" pool into one value."""
    h = _headline(runs).with_columns(pl.col("cfg_max_train_windows").cast(pl.Int64))
    h = h.with_columns(pl.col("arm_rule").alias("cfg_rule"), pl.col("eff_norm").alias("cfg_norm"))
    base = h.filter(pl.col("arm") == "base").group_by("series", "base").agg(
        *(pl.col(f"cfg_{k}").first().alias(f"b_{k}") for k in KNOBS))
    h = h.join(base, on=["series", "base"])
    rows = []
    for rec in h.iter_rows(named=True):
        diff = [k for k in KNOBS if rec[f"cfg_{k}"] != rec[f"b_{k}"]]
        if not diff:
            rows.append({**rec, "knob": "base", "value": "base", "is_base": True})
            for k in KNOBS:
                if rec["cfg_window"] == 1 and k in ("rule", "window", "stride"):
                    continue  # a table: rows, not windows
                if k == "norm" and not rec["multi"]:
                    continue  # one feature: normalisation is a constant factor
                rows.append({**rec, "knob": k, "value": str(rec[f"cfg_{k}"]), "is_base": True})
        elif len(diff) == 1:
            rows.append({**rec, "knob": diff[0], "value": str(rec[f"cfg_{diff[0]}"]), "is_base": False})
        else:
            rows.append({**rec, "knob": rec["arm"], "value": "", "is_base": False})
    k = pl.DataFrame(rows, infer_schema_length=None)
    per_series = k.group_by("base", "knob", "value", "series").agg(
        *(pl.col(m).fill_nan(None).mean() for m in METRICS), pl.col("is_base").any())
    return per_series


def knob_summary(per_series: pl.DataFrame, knob: str) -> str:
    """Values of one knob per family, ranked by mean validation PR-AUC; Δ columns are paired
    with the family's base on the same series (values missing on some series, e.g. the
    chapter's pipeline-default scaling = robust on SMD/ASD, standard on NAB/ODDS, still compare)."""
    d = per_series.filter(pl.col("knob") == knob)
    base = per_series.filter(pl.col("knob") == "base").select(
        "base", "series", pl.col("val_pr_auc").alias("_bv"), pl.col("score_pr_auc").alias("_bs"))
    d = d.join(base, on=["base", "series"], how="left")
    out = []
    for fam in d["base"].unique(maintain_order=True):
        f = d.filter(pl.col("base") == fam)
        if f["value"].n_unique() < 2:
            continue
        agg = f.group_by("value").agg(
            pl.len().alias("series"), pl.col("val_pr_auc").mean().alias("mean val PR"),
            (pl.col("val_pr_auc") - pl.col("_bv")).mean().alias("Δval vs base"),
            (pl.col("val_pr_auc") > pl.col("_bv") + 1e-9).sum().alias("val wins"),
            pl.col("score_pr_auc").mean().alias("mean score PR"),
            (pl.col("score_pr_auc") - pl.col("_bs")).mean().alias("Δscore vs base"),
            (pl.col("score_pr_auc") > pl.col("_bs") + 1e-9).sum().alias("score wins"),
            pl.col("val_vus_pr").fill_nan(None).mean().alias("mean val VUS"),
            pl.col("score_vus_pr").fill_nan(None).mean().alias("mean score VUS"),
            pl.col("is_base").all().alias("base?")).sort("mean val PR", descending=True)
        out.append(agg.select(pl.lit(fam).alias("family"), pl.all()))
    return _md(pl.concat(out, how="vertical_relaxed")) if out else "(no data)\n"


def knob_by_kind(per_series: pl.DataFrame, knob: str) -> str:
    """A knob's values per family and data kind (SMD, ASD, NAB, ODDS): defaults may differ by kind."""
    kind = pl.col("series").str.split(":").list.first()
    d = per_series.filter(pl.col("knob") == knob).with_columns(kind.alias("kind"))
    base = per_series.filter(pl.col("knob") == "base").select(
        "base", "series", pl.col("val_pr_auc").alias("_bv"), pl.col("score_pr_auc").alias("_bs"))
    d = d.join(base, on=["base", "series"], how="left")
    agg = d.group_by("base", "kind", "value").agg(
        pl.len().alias("series"), pl.col("val_pr_auc").mean().alias("mean val PR"),
        (pl.col("val_pr_auc") - pl.col("_bv")).mean().alias("Δval"),
        pl.col("score_pr_auc").mean().alias("mean score PR"),
        (pl.col("score_pr_auc") - pl.col("_bs")).mean().alias("Δscore"),
        pl.col("is_base").all().alias("base?"))
    order = pl.col("kind").replace_strict({"smd": 0, "asd": 1, "nab": 2, "odds": 3}, default=9)
    agg = agg.with_columns(order.alias("_o")).sort(["base", "_o", "mean val PR"],
                                                   descending=[False, False, True]).drop("_o")
    return _md(agg.rename({"base": "family"}))


def scaling_rule_table(runs: pl.DataFrame) -> str:
    """Scaling x row rule per family (normalisation as the base), from fits that differ from
    the base in scaling only: every fit was scored under every rule, so this costs nothing."""
    r = runs.filter(pl.col("norm") == pl.col("eff_norm"),  # the family's own normalisation
                    (pl.col("arm") == "base") | pl.col("arm").str.starts_with("scaling="),
                    pl.col("cfg_window") > 1, pl.col("base") != "lstm_ae")
    r = r.unique(subset=["series", "base", "cfg_scaling", "rule", "seed"])
    per = r.group_by("base", "cfg_scaling", "rule", "series").agg(
        pl.col("val_pr_auc").mean(), pl.col("score_pr_auc").mean())
    n_need = per["series"].n_unique()
    agg = per.group_by("base", "cfg_scaling", "rule").agg(
        pl.len().alias("series"), pl.col("val_pr_auc").mean().alias("mean val PR"),
        pl.col("score_pr_auc").mean().alias("mean score PR"))
    agg = agg.filter(pl.col("series") == n_need).sort(["base", "mean val PR"], descending=[False, True])
    return _md(agg.rename({"base": "family", "cfg_scaling": "scaling"}))


def long_settings(per_series: pl.DataFrame, ens: pl.DataFrame | None,
                  knn: pl.DataFrame | None) -> pl.DataFrame:
    """(setting, series, metrics) from the ablation, the ensembles and KNN, seed-averaged."""
    alias = per_series.group_by("base", "knob", "value").agg(pl.col("is_base").all().alias("_alias"))
    ps = per_series.join(alias, on=["base", "knob", "value"]).filter(
        ~pl.col("_alias") | (pl.col("knob") == "base"))  # drop knob=value labels that are always the base
    parts = [ps.select(
        pl.concat_str("base", pl.lit(" "), "knob", pl.lit("="), "value").alias("setting"),
        "series", *METRICS)]
    if ens is not None:
        ens = ens.filter(~pl.col("ensemble").str.starts_with("single:"))  # = "<family> base=base"
        parts.append(ens.group_by(pl.concat_str("ensemble", pl.lit(" "), "combiner", pl.lit(" "),
                                                "reference").str.strip_chars().alias("setting"),
                                  "series").agg(*(pl.col(m).mean() for m in METRICS)))
    if knn is not None:
        parts.append(knn.select(pl.concat_str("detector", pl.lit(" "), "scaling", pl.lit(" "), "rule")
                                .alias("setting"), "series", *METRICS))
    return pl.concat([p.select("setting", "series", *(pl.col(m).cast(pl.Float64) for m in METRICS))
                      for p in parts])


def ranking_table(long: pl.DataFrame, min_series: int, top: int = 30) -> str:
    """Settings present on at least `min_series` series, ranked by mean validation PR-AUC.

    "kind-balanced" averages the kinds first (SMD, ASD mean, NAB mean, ODDS) so the six
    ASD machines do not outvote the rest; the score-split columns are read, never ranked on."""
    kind = pl.col("series").str.split(":").list.first()
    d = long.with_columns(kind.alias("kind"))
    n = d.group_by("setting").agg(pl.col("series").n_unique().alias("series"))
    keep = n.filter(pl.col("series") >= min_series)["setting"].to_list()
    d = d.filter(pl.col("setting").is_in(keep))
    by_kind = d.group_by("setting", "kind").agg(pl.col("val_pr_auc").mean().alias("v"),
                                                pl.col("score_pr_auc").mean().alias("s"))
    bal = by_kind.group_by("setting").agg(pl.col("v").mean().alias("kind-balanced val PR"),
                                          pl.col("s").mean().alias("kind-balanced score PR"))
    agg = d.group_by("setting").agg(
        pl.col("series").n_unique().alias("series"),
        pl.col("val_pr_auc").mean().alias("mean val PR"),
        pl.col("score_pr_auc").mean().alias("mean score PR"),
        pl.col("val_vus_pr").fill_nan(None).mean().alias("mean val VUS"),
        pl.col("score_vus_pr").fill_nan(None).mean().alias("mean score VUS")).join(bal, on="setting")
    agg = agg.sort("mean val PR", descending=True).with_row_index("rank", offset=1).head(top)
    return _md(agg)


def per_series_table(long: pl.DataFrame, settings: list[str], metric: str) -> str:
    """One column per series for the chosen settings, plus their mean over those series."""
    rows = []
    for name in settings:
        f = long.filter(pl.col("setting") == name).sort("series")
        if f.is_empty():
            continue
        rec: dict[str, Any] = {"setting": name}
        for r in f.iter_rows(named=True):
            rec[r["series"].split(":")[1][:12]] = r[metric]
        rec["mean"] = float(f[metric].fill_nan(None).mean())
        rows.append(rec)
    return _md(pl.DataFrame(rows, infer_schema_length=None)) if rows else "(no data)\n"


def ensemble_table(ens: pl.DataFrame) -> str:
    """Ensembles and single families: mean over series of the seed-mean, plus the deployable
    per-series validation pick among nightowl's single families and its score-split number."""
    e = ens.with_columns(pl.concat_str("ensemble", pl.lit(" "), "combiner", pl.lit(" "), "reference")
                         .str.strip_chars().alias("name"))
    per = e.group_by("name", "series").agg(*(pl.col(m).fill_nan(None).mean() for m in METRICS))
    singles = per.filter(pl.col("name").is_in(["single:dense_ae", "single:usad", "single:pca"]))
    pick = (singles.sort("val_pr_auc", descending=True).group_by("series").first()
            .with_columns(pl.lit("validation pick among dense_ae/usad/pca").alias("name")))
    per = pl.concat([per, pick.select(per.columns)])
    res = per.group_by("name").agg(pl.len().alias("series"), *(pl.col(m).fill_nan(None).mean() for m in METRICS))
    return _md(res.sort(["series", "val_pr_auc"], descending=[True, True]))


def knn_table(knn: pl.DataFrame) -> str:
    per = knn.group_by("detector", "scaling", "rule", maintain_order=True).agg(
        pl.len().alias("series"), *(pl.col(m).fill_nan(None).mean() for m in METRICS))
    return _md(per)


PER_SERIES_SETTINGS = [
    "chapter base=base", "chapter rule=mean_window", "lstm_ae base=base",
    "dense_ae base=base", "dense_ae scaling=none", "dense_ae scaling=standard",
    "dense_ae rule=mean_window", "dense_ae rule=max_window",
    "usad base=base", "usad scaling=standard", "usad rule=mean_window", "usad rule=max_window",
    "pca base=base", "pca scaling=standard", "pca rule=mean_window", "pca rule=max_window",
    "cheap3 robust_z_mean train", "cheap3 rank_mean split", "cheap3 logp_mean validation",
    "cheap3+chapter robust_z_mean train", "KNN rows none row", "KNN windows L=32 none mean_window",
]


def report(out: Path) -> str:
    runs = _with_eff_norm(pl.read_csv(out, infer_schema_length=None))
    parts = ["## SMD machine-2-1: every arm (headline rule / norm of each arm)\n", smd_table(runs)]
    parts += ["\n## Row rule x normalisation on the base fits, machine-2-1\n",
              rule_norm_table(runs, "smd:machine-2-1")]
    parts += ["\n## Row rule x normalisation on the base fits, mean over the 10 time series\n",
              rule_norm_table(runs)]
    per_series = knob_table(runs)
    for knob in ("scaling", "rule", "norm", "window", "stride", "epochs", "max_train_windows"):
        parts += [f"\n## Cross-dev: {knob} (ranked by mean validation PR-AUC)\n",
                  knob_summary(per_series, knob)]
    for knob in ("scaling", "rule"):
        parts += [f"\n## Cross-dev: {knob} by data kind\n", knob_by_kind(per_series, knob)]
    parts += ["\n## Cross-dev: scaling x rule (two changes, free: every fit is scored under every rule)"
              " on the 10 time series\n", scaling_rule_table(runs)]
    ens_path = out.with_name(out.stem + "_ensembles.csv")
    ens = pl.read_csv(ens_path, infer_schema_length=None) if ens_path.exists() else None
    knn_path = out.with_name(out.stem + "_knn.csv")
    knn = pl.read_csv(knn_path, infer_schema_length=None) if knn_path.exists() else None
    if ens is not None:
        parts += ["\n## Ensembles vs single families\n", ensemble_table(ens)]
    if knn is not None:
        parts += ["\n## PyOD KNN: rows vs windows (mean over series)\n", knn_table(knn)]
    long = long_settings(per_series, ens, knn)
    parts += ["\n## Cross-dev ranking: settings on all 10 time series (no cardio), by mean validation PR-AUC\n",
              ranking_table(long.filter(~pl.col("series").str.starts_with("odds")), 10)]
    parts += ["\n## Cross-dev ranking: settings on all 11 dev series (cardio: rows), by mean validation PR-AUC\n",
              ranking_table(long, 11)]
    for metric in ("val_pr_auc", "score_pr_auc"):
        parts += [f"\n## Per series, {metric}\n", per_series_table(long, PER_SERIES_SETTINGS, metric)]
    return "\n".join(parts)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
