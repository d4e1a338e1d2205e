"""Benchmark runner: public labelled data through the real training pipeline, scored on unseen rows.

Why: numbers a user can compare with the literature must come from the same
code path production uses (ingest with GX -> scale -> window index -> shared
engine -> calibration -> registered version), and must be measured on rows no
choice was made on. Every series is split by its loader into train /
validation / score; thresholds and the champion are chosen on validation, and
every number in the table is measured on the score split. PA-F1 is reported
because papers do, never as the headline (it is ~0.9+ for nearly anything).

Each series is one Prefect flow run (`nightowl-benchmark-series`) through the
same stage sequence as the train flow (flows.candidates), so its versions are
the artifacts a nightly job would promote; with no server configured, Prefect's
ephemeral API records the runs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import flow

from flows.candidates import new_run_id, train_candidates
from models.registry import FAMILIES
from schemas.config import DatasetConfig, parse_config
from tasks.benchmark.baselines import BaselineSeries, ChapterSettings, run_baselines
from tasks.common import store_for
from tasks.data import public_data as loaders
from tasks.data.ingest import ingest_source
from tasks.data.layer import load_validated
from tasks.data.prepare import assign_splits
from tasks.data.scale import apply_scaler
from tasks.evaluation.drift_statistics import drift_report
from tasks.evaluation.metrics import evaluate, hit_rate, interpretation_mask
from tasks.evaluation.normalise import thresholds_by_entity
from tasks.evaluation.thresholds import fpr_by_entity
from tasks.nightly.drift import version_reference
from tasks.scoring import (
    ScoredRows,
    VersionScorer,
    score_version,
    validated_context,
    version_scorer,
)
from tasks.training.register import choose_champion
from tasks.versions import VersionRef, export_outcome, load_model

log = logging.getLogger(__name__)

KINDS: dict[str, tuple[Callable[..., list[str]], Callable[..., Any]]] = {
    "smd": (loaders.discover_smd, loaders.load_smd),
    "nab": (loaders.discover_nab, loaders.load_nab),
    "odds": (loaders.discover_odds, loaders.load_odds),
    "table": (loaders.discover_table, loaders.load_table),  # any labelled CSV/Parquet table
}
TABLE_COLUMNS = {  # CSV column -> printed header
    "dataset": "dataset", "series": "series", "family": "family", "val_pr_auc": "val PR-AUC",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC", "vus_pr": "VUS-PR", "best_f1": "best F1", "pa_f1": "PA-F1",
    "fit_s": "fit s", "score_rows_per_s": "score rows/s",
}
EXTRA_COLUMNS = {"fpr": "FPR@thr", "fpr_entities_within_3sd": "FPR ok (entities)",
                 "hitrate_100": "HR@100", "hitrate_150": "HR@150",
                 "exported": "ONNX exported"}  # 1/0 per version (mean rows: the family's rate)
CHAMPION = "champion"


@dataclass(frozen=True)
class BenchmarkOptions:
    """What to run and how much compute to spend on each family."""

    families: tuple[str, ...] = ()
    epochs: int | None = None
    max_train_windows: int | None = None
    window: int | None = None
    threads: int = 1
    baselines: bool = False  # also PyOD's detectors and the chapter's LSTM-AE on the same rows
    chapter_epochs: int | None = None  # the chapter LSTM-AE's epochs (None: its own 20)
    combiner: str | None = None  # the ensemble's combiner (None: the config's)


def benchmark_config(cfg: DatasetConfig, options: BenchmarkOptions) -> DatasetConfig:
    """The loader's config with the chosen families and compute caps (validated again)."""
    data = cfg.model_dump()
    data["families"] = [{"name": f} for f in options.families or sorted(FAMILIES)]
    data["training"]["cpu_threads"] = options.threads
    if options.epochs is not None:
        data["training"]["epochs"] = options.epochs
    if options.max_train_windows is not None:
        data["training"]["max_train_windows"] = options.max_train_windows
    if options.combiner is not None:
        data["ensemble"]["combiner"] = options.combiner
    if options.window is not None and cfg.window.length > 1:  # tables (window 1) stay rows
        data["window"]["length"] = options.window
    return parse_config(data, origin=f"benchmark({cfg.name})")


def score_split_rows(cfg: DatasetConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the score split's validated rows, tagged by split; their context: the validated rows
    before them that tasks.scoring's context rule reads)."""
    if cfg.splits.score is None:
        raise ValueError(f"{cfg.name}: a benchmark series needs a score split")
    store, start = store_for(cfg), cfg.splits.score.start
    rows = assign_splits(load_validated(store, cfg, start, cfg.splits.score.end), cfg.splits)
    return rows, validated_context(store, cfg, start, None, cfg.window.length)


def timed_scores(cfg: DatasetConfig, ref: VersionRef, frame: pl.DataFrame, context: pl.DataFrame
                 ) -> tuple[VersionScorer, ScoredRows, float]:
    """(the version, its scores of `frame` by tasks.scoring's one path, seconds they took)."""
    version = version_scorer(cfg, ref)
    score_version(version, frame.head(256), context)  # warm-up, untimed
    started = time.perf_counter()
    scored = score_version(version, frame, context)
    return version, scored, time.perf_counter() - started


def evaluate_version(
    cfg: DatasetConfig, ref: VersionRef, frame: pl.DataFrame, context: pl.DataFrame,
    truth: np.ndarray | None,
) -> tuple[dict[str, float], VersionScorer, ScoredRows]:
    """Score-split metrics of one registered version at its calibrated threshold, plus speed;
    scored by tasks.scoring's one path (the scores a night would give these rows). The
    version and its scores come back too: the champion's drift column reuses them."""
    version, scored, seconds = timed_scores(cfg, ref, frame, context)
    rows, scores, contrib, loaded = scored.rows, scored.scores, scored.contributions, version.loaded
    keep = (rows["split"] == "score").to_numpy() & np.isfinite(scores)
    labels = rows["label"].to_numpy().astype(np.int8)[keep]
    threshold = float(loaded.threshold["threshold"])
    out = evaluate(labels, scores[keep], threshold, cfg.window.length)
    out["score_rows_per_s"] = rows.height / seconds if seconds > 0 else float("nan")
    limits, _ = thresholds_by_entity(scores, rows["entity"].to_numpy(), loaded.threshold)
    per_entity = fpr_by_entity(rows["entity"].to_numpy()[keep], labels, scores[keep],
                               limits[keep], cfg.threshold.target_fpr)
    out["fpr_entities_within_3sd"] = (sum(e["within_3sd"] for e in per_entity) / len(per_entity)
                                      if per_entity else float("nan"))
    out["fpr_by_entity"] = "; ".join(f"{e['entity']} {e['fpr']:.3f}{'' if e['within_3sd'] else ' (out)'}"
                                     for e in per_entity)
    if truth is not None:
        for p in (100, 150):
            out[f"hitrate_{p}"] = hit_rate(labels, contrib[keep], truth[keep], p=float(p))
    return out, version, scored


def exported(cfg: DatasetConfig, ref: VersionRef) -> float:
    """1.0 when the version ships model.onnx, 0.0 when its export was refused, NaN when none was
    attempted (the ensemble has no graph of its own): a float, so mean rows give the rate."""
    outcome = export_outcome(store_for(cfg), ref)
    return float("nan") if outcome is None else float(bool(outcome.get("exported")))


def selection_columns(selection: dict[str, Any] | None) -> dict[str, Any]:
    """What the champion's choice rested on (prior rule): events, prior, margin, confidence."""
    if not selection or selection.get("rule") != "prior":
        return {}
    return {"events": selection["events"], "prior": selection["prior"],
            "prior_source": selection["prior_source"], "challenger": selection["challenger"],
            "margin": selection["margin"], "confidence": selection["confidence"],
            "switched": selection["switched"]}


def score_split_drift(cfg: DatasetConfig, version: VersionScorer, scored: ScoredRows
                      ) -> dict[str, Any]:
    """The nightly drift check (tasks.evaluation.drift_statistics against the version's
    training reference) over the whole score split as one batch, on the scores
    `evaluate_version` computed by tasks.scoring's one path, and what an operator would have
    seen without it: the rows the calibrated threshold flags, and how many are normal."""
    reference = version_reference(store_for(cfg), version.ref)
    if reference is None:
        return {"drift": "no reference"}
    rows, scores = scored.rows, scored.scores
    keep = (rows["split"] == "score").to_numpy() & np.isfinite(scores)
    limits, _ = thresholds_by_entity(scores, rows["entity"].to_numpy(), version.loaded.threshold)
    flagged = (scores > limits)[keep]
    normal = rows["label"].to_numpy()[keep] == 0
    report = drift_report(reference, rows.filter(pl.Series(keep)),
                          list(reference["features"]), cfg.drift, scores[keep], flagged)
    return {"drift": "drift" if report["drift"] else "stable",
            "drift_reasons": "; ".join(report["reasons"]), "alerts": int(flagged.sum()),
            "false_alerts": int((flagged & normal).sum()),
            "normal_flagged": float((flagged & normal).sum() / max(int(normal.sum()), 1))}


def interpretation_truth(report: loaders.LoadReport, frame: pl.DataFrame, n_features: int) -> np.ndarray | None:
    """SMD's cause dimensions as a (rows of `frame`, F) mask; None without interpretation labels."""
    if not report.interpretation:
        return None
    total = sum(report.rows.values())
    mask = interpretation_mask(report.interpretation, total, n_features, report.interpretation_offset)
    return mask[total - frame.height:]  # `frame` is the tail of the one-entity series


@flow(name="nightowl-benchmark-series", log_prints=True)
def benchmark_series(
    kind: str, root: Path, name: str, work_dir: Path, options: BenchmarkOptions
) -> list[dict[str, Any]]:
    """One series or table: train all families, evaluate each and the champion on the score split."""
    cfg, report = KINDS[kind][1](root, name, work_dir)
    cfg = benchmark_config(cfg, options)
    ingest_source(cfg)
    (run,) = train_candidates(cfg, f"benchmark-{new_run_id()}", tolerate_failures=True)
    if not run.candidates:
        raise ValueError(f"{cfg.name}: every family failed: {run.failed}")
    champion = choose_champion(cfg, run.candidates, selection=run.selection)
    frame, context = score_split_rows(cfg)
    truth = interpretation_truth(report, frame, len(cfg.columns.features))
    rows: list[dict[str, Any]] = [
        {"dataset": kind, "series": name, "family": family, "role": "family", "picked": "",
         "note": f"failed: {why}"}
        for family, why in run.failed.items()]
    evaluated: dict[str, tuple[VersionScorer, ScoredRows]] = {}  # version id -> its scores
    for c in run.candidates:
        metrics, version, scored = evaluate_version(cfg, c.ref, frame, context, truth)
        evaluated[c.ref.version] = (version, scored)
        rows.append({"dataset": kind, "series": name, "family": c.family, "role": "family",
                     "picked": "", "note": "",
                     "version": c.ref.version, "fit_s": c.fit_seconds,
                     f"val_{champion['metric']}": c.metric(champion["metric"]),
                     "target_fpr": cfg.threshold.target_fpr, **metrics,
                     "exported": exported(cfg, c.ref)})
    best = next(r for r in rows if r.get("version") == champion["version"])
    how = (f"by {champion['rule']}: {run.selection['why']}" if run.selection
           else f"by validation {champion['metric']}")
    ref = next(c.ref for c in run.candidates if c.ref.version == champion["version"])
    rows.append({**best, "family": CHAMPION, "role": CHAMPION, "picked": best["family"],
                 "note": how, **selection_columns(run.selection),
                 **score_split_drift(cfg, *evaluated[champion["version"]])})
    log.info("%s %s: champion on validation %s (%s %.4f)", kind, name, best["family"],
             champion["metric"], champion["value"])
    if options.baselines:
        chapter = ChapterSettings(**({} if options.chapter_epochs is None
                                     else {"epochs": options.chapter_epochs}))
        for row in run_baselines(baseline_series(cfg, ref), chapter=chapter):
            rows.append({"dataset": kind, "series": name, "picked": "", **row})
    return rows


def baseline_series(cfg: DatasetConfig, ref: VersionRef) -> BaselineSeries:
    """Every validated row of the series (train included), split like the runner and scaled by
    the champion's scaler (fitted on train rows): the rows the families were measured on."""
    store = store_for(cfg)
    loaded = load_model(store, ref, None)  # its scaler and features; no torch model
    frame = assign_splits(load_validated(store, cfg), cfg.splits)
    feats = loaded.features
    return BaselineSeries(
        scaled=apply_scaler(frame, loaded.scaler).select(feats).to_numpy().astype(np.float64),
        shipped=frame.select(feats).to_numpy().astype(np.float64),
        entity=frame["entity"].rle_id().to_numpy(), split=frame["split"].to_numpy().astype(str),
        labels=frame["label"].to_numpy().astype(np.int8), window=cfg.window.length,
        target_fpr=cfg.threshold.target_fpr, train_on_normal_only=cfg.splits.train_on_normal_only)


def with_means(table: pl.DataFrame) -> pl.DataFrame:
    """Append one mean row per family (series = "mean"), families in first-seen order."""
    numeric = [c for c, t in table.schema.items() if t.is_numeric()]
    named = {"dataset", "family", "series", "picked", "version", "note", "fpr_by_entity", *numeric}
    means = table.group_by("dataset", "family", maintain_order=True).agg(
        pl.lit("mean").alias("series"), pl.lit("").alias("picked"), pl.lit("").alias("version"),
        pl.format("mean of {} series", pl.col("pr_auc").fill_nan(None).is_not_null().sum())
        .alias("note"),
        *([pl.lit("").alias("fpr_by_entity")] if "fpr_by_entity" in table.columns else []),
        *(pl.col(c).fill_nan(None).mean() for c in numeric),
        *(pl.col(c).first() for c in table.columns if c not in named))
    return pl.concat([table, means.select(table.columns)], how="vertical_relaxed")


def run_benchmark(
    kind: str, root: str | Path, work_dir: str | Path, options: BenchmarkOptions = BenchmarkOptions(),
    series: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Every series found under `root` (or the ones named), all families; a mean row per family."""
    if kind not in KINDS:
        raise ValueError(f"unknown benchmark kind {kind!r}; available: {', '.join(KINDS)}")
    unknown = sorted(set(options.families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; available: {', '.join(sorted(FAMILIES))}")
    root, work_dir = Path(root), Path(work_dir)
    names = list(series) if series else KINDS[kind][0](root)
    if kind == "nab":  # only series that have labels
        names = [n for n in names if _nab_labelled(root, n)]
    if not names:
        raise ValueError(f"no {kind} series found under {root}")
    rows = [row for name in names for row in benchmark_series(kind, root, name, work_dir, options)]
    return with_means(pl.DataFrame(rows, infer_schema_length=None))


def _nab_labelled(root: Path, name: str) -> bool:
    import json

    path = root / "labels" / "combined_windows.json"
    return path.is_file() and f"{name}.csv" in json.loads(path.read_text())


def format_table(table: pl.DataFrame) -> str:
    """The printed table (Markdown): the headline columns, FPR and SMD's HitRate when present."""
    columns = {**TABLE_COLUMNS, **{k: v for k, v in EXTRA_COLUMNS.items() if k in table.columns}}
    lines = ["| " + " | ".join(columns.values()) + " |",
             "|" + "|".join("---" if c in ("dataset", "series", "family") else "---:"
                            for c in columns) + "|"]
    for row in table.iter_rows(named=True):
        cells = []
        for c in columns:
            value = row.get(c)
            if c == "family" and row.get("picked"):
                value = f"{value} ({row['picked']})"
            elif c == "family" and (row.get("note") or "").startswith("failed"):
                value = f"{value} (failed)"
            cells.append(_cell(c, value))
        lines.append("| " + " | ".join(cells) + " |")
    if "exported" in table.columns:
        tried = table.filter((pl.col("role") == "family") & (pl.col("series") != "mean")
                             & pl.col("exported").is_not_nan())["exported"]
        if tried.len():
            lines += ["", f"ONNX export rate: {int(tried.sum())} of {tried.len()} family versions "
                          f"({tried.mean():.1%})"]
    failures = table.filter(pl.col("note").str.starts_with("failed"))
    if failures.height:
        lines += ["", *(f"- {r['series']} / {r['family']}: {r['note']}"
                        for r in failures.iter_rows(named=True))]
    return "\n".join(lines)


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        if column == "score_rows_per_s":
            return f"{value:,.0f}"
        return f"{value:.1f}" if column == "fit_s" else f"{value:.3f}"
    return str(value)
