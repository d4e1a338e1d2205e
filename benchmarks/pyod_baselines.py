"""Off-the-shelf PyOD detectors on exactly the rows `nightowl benchmark` uses, scored the same way.

Why: "is nightowl's champion any good?" needs a head-to-head against well-kept
detectors on the same series, the same train / validation / score rows and the
same metric code. Each series is written by the same loader (tasks.evaluation.loaders) the
benchmark runner uses, its rows are split by the same config (assign_splits), and
features are scaled with the pipeline's own scaler fitted on train rows only.
Detectors are fitted on train rows (labelled rows dropped, as the pipeline drops
labelled windows), then score the validation and score splits row by row.

Selection mirrors the runner: "best on validation" picks the detector with the
highest validation PR-AUC and reports its score-split numbers (fair: no choice
sees the score split). "oracle" is the best detector on the score split itself:
an upper bound that no deployable procedure can reach, labelled as such.
The threshold for FPR@thr and PA-F1 is the split-conformal one on validation
normal rows (target FPR 0.05), as in calibration.

    .venv/bin/python benchmarks/pyod_baselines.py [--kinds smd,nab,odds] [--out pyod.csv]

Needs the `bench` extra (pyod>=2,<3). Runs on 1 torch thread by default.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED_DATA  # noqa: E402
from schemas.config import DatasetConfig  # noqa: E402
from tasks.data.prepare import assign_splits  # noqa: E402
from tasks.data.scale import apply_scaler, fit_scaler  # noqa: E402
from tasks.evaluation import loaders  # noqa: E402
from tasks.evaluation.baselines import finite, pyod_detectors  # noqa: E402
from tasks.evaluation.metrics import evaluate, pr_auc  # noqa: E402
from tasks.evaluation.thresholds import conformal_fpr_threshold, rates  # noqa: E402

log = logging.getLogger(__name__)

LOADERS: dict[str, tuple[Callable[..., list[str]], Callable[..., Any], Path]] = {
    "smd": (loaders.discover_smd, loaders.load_smd, SHARED_DATA / "smd"),
    "nab": (loaders.discover_nab, loaders.load_nab, SHARED_DATA / "nab"),
    "odds": (loaders.discover_odds, loaders.load_odds, SHARED_DATA / "tabular"),
}
NAB_WINDOW = 32  # the runner's `--window 32` for NAB: the VUS-PR buffer follows the window
BEST_ON_VALIDATION = "best on validation"
ORACLE = "oracle: best on score split"


@dataclass(frozen=True)
class SplitRows:
    """Scaled feature rows and labels of one series, by split (the runner's rows)."""

    train: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    score: np.ndarray
    score_labels: np.ndarray
    window: int


detectors = pyod_detectors  # PyOD's defaults, shared with the runner's `--baselines`


def split_rows(cfg: DatasetConfig, window: int, scaling: str | None = None) -> SplitRows:
    """The loader's raw rows, split by the config and scaled like the pipeline (train-only fit).

    `scaling` overrides the config's method (to compare under another scaling).
    """
    frame = pl.read_parquet(cfg.source.path).sort(["entity", "timestamp"])
    frame = assign_splits(frame, cfg.splits)
    feats = cfg.columns.features
    train = frame.filter(pl.col("split") == "train")
    if cfg.splits.train_on_normal_only:
        train = train.filter(pl.col("label") == 0)
    scaled = apply_scaler(frame, fit_scaler(train, feats, scaling or cfg.scaling.method))

    def part(name: str, normal_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        rows = scaled.filter(pl.col("split") == name)
        if normal_only:
            rows = rows.filter(pl.col("label") == 0)
        return rows.select(feats).to_numpy().astype(np.float64), rows["label"].to_numpy()

    x_train, _ = part("train", cfg.splits.train_on_normal_only)
    x_val, y_val = part("validation")
    x_score, y_score = part("score")
    keep = x_train.std(axis=0) > 1e-12  # PyOD's PCA divides by each component's variance
    if not keep.all():
        log.info("%s: dropped %d features constant in train: %s", cfg.name, int((~keep).sum()),
                 [f for f, k in zip(feats, keep) if not k])
    return SplitRows(x_train[:, keep], x_val[:, keep], y_val, x_score[:, keep], y_score, window)


def run_detector(make: Callable[[], Any], rows: SplitRows) -> dict[str, float]:
    """Fit on train rows; validation PR-AUC (for selection) and score-split metrics."""
    model = make()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(rows.train)
    fit_s = time.perf_counter() - started
    val_scores = finite(model.decision_function(rows.val))
    started = time.perf_counter()
    scores = finite(model.decision_function(rows.score))
    score_s = time.perf_counter() - started
    threshold = conformal_fpr_threshold(val_scores[rows.val_labels == 0], 0.05)
    metrics = evaluate(rows.score_labels, scores, threshold, rows.window)
    return {"val_pr_auc": pr_auc(rows.val_labels, val_scores), **metrics,
            "fpr": rates(scores, rows.score_labels, threshold)["fpr"],
            "fit_s": fit_s, "score_rows_per_s": rows.score.shape[0] / max(score_s, 1e-9)}


def benchmark_series(
    kind: str, name: str, work_dir: Path, only: set[str], scaling: str | None = None
) -> list[dict[str, Any]]:
    """Every detector on one series, then the validation pick and the score-split oracle."""
    _, load, root = LOADERS[kind]
    cfg, _ = load(root, name, work_dir / kind)
    window = NAB_WINDOW if kind == "nab" else cfg.window.length
    rows = split_rows(cfg, window, scaling)
    log.info("%s %s: train %s, validation %s (%d anomalous), score %s (%d anomalous)", kind, name,
             rows.train.shape, rows.val.shape, int(rows.val_labels.sum()), rows.score.shape,
             int(rows.score_labels.sum()))
    out = []
    for det, make in detectors(rows.train).items():
        if only and det not in only:
            continue
        try:
            metrics = run_detector(make, rows)
        except Exception as err:  # one detector's failure must not end the comparison
            log.warning("%s %s: %s failed: %s", kind, name, det, err)
            out.append({"dataset": kind, "series": name, "detector": det, "note": f"failed: {err}"})
            continue
        log.info("%s %s %s: val PR-AUC %.3f, score PR-AUC %.3f (fit %.1f s)", kind, name, det,
                 metrics["val_pr_auc"], metrics["pr_auc"], metrics["fit_s"])
        out.append({"dataset": kind, "series": name, "detector": det, "note": "", **metrics})
    return out + selections(out)


def selections(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The validation pick (deployable) and the score-split oracle (not deployable) as extra rows."""
    ok = [r for r in rows if not r["note"] and np.isfinite(r["val_pr_auc"])]
    if not ok:
        return []
    picked = max(ok, key=lambda r: r["val_pr_auc"])
    oracle = max(ok, key=lambda r: r["pr_auc"])
    return [{**picked, "detector": f"{BEST_ON_VALIDATION} ({picked['detector']})"},
            {**oracle, "detector": f"{ORACLE} ({oracle['detector']})"}]


def with_means(table: pl.DataFrame) -> pl.DataFrame:
    """Per data set with several series: one mean row per detector (selection rows by role)."""
    role = (pl.when(pl.col("detector").str.starts_with(BEST_ON_VALIDATION)).then(pl.lit(BEST_ON_VALIDATION))
            .when(pl.col("detector").str.starts_with(ORACLE)).then(pl.lit(ORACLE))
            .otherwise(pl.col("detector")))
    numeric = [c for c, t in table.schema.items() if t.is_numeric()]
    multi = table.group_by("dataset").agg(pl.col("series").n_unique().alias("n")).filter(pl.col("n") > 1)
    if multi.height == 0:
        return table
    means = (table.join(multi.select("dataset"), on="dataset").with_columns(role.alias("detector"))
             .group_by("dataset", "detector", maintain_order=True)
             .agg(pl.lit("mean").alias("series"), pl.lit("").alias("note"),
                  *(pl.col(c).fill_nan(None).mean() for c in numeric)))
    return pl.concat([table, means.select(table.columns)], how="vertical_relaxed")


COLUMNS = {"dataset": "dataset", "series": "series", "detector": "detector",
           "val_pr_auc": "val PR-AUC", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "vus_pr": "VUS-PR",
           "best_f1": "best F1", "pa_f1": "PA-F1", "fpr": "FPR@thr", "fit_s": "fit s"}


def format_table(table: pl.DataFrame) -> str:
    """Markdown: validation PR-AUC (what selection saw) then the score-split numbers."""
    lines = ["| " + " | ".join(COLUMNS.values()) + " |",
             "|" + "|".join("---" if c in ("dataset", "series", "detector") else "---:"
                            for c in COLUMNS) + "|"]
    for row in table.iter_rows(named=True):
        cells = []
        for c in COLUMNS:
            v = row.get(c)
            if v is None or (isinstance(v, float) and not np.isfinite(v)):
                cells.append("failed" if c == "val_pr_auc" and row.get("note") else "n/a")
            elif isinstance(v, float):
                cells.append(f"{v:.1f}" if c == "fit_s" else f"{v:.3f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="smd,nab,odds")
    parser.add_argument("--detectors", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scaling", default=None, choices=["standard", "robust", "minmax"],
                        help="override the loader's scaling (default: the pipeline's own)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    only = {d.strip() for d in args.detectors.split(",") if d.strip()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pyod-bench-") as tmp:
        for kind in (k.strip() for k in args.kinds.split(",") if k.strip()):
            discover, _, root = LOADERS[kind]
            for name in discover(root):
                rows += benchmark_series(kind, name, Path(tmp), only, args.scaling)
    table = with_means(pl.DataFrame(rows, infer_schema_length=None))
    print(format_table(table))
    if args.out:
        table.write_csv(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
