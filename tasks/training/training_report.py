"""Reports of a training run: Markdown + PNG plots stored with each version, Prefect artifacts.

Why: a number in metrics.json is only trusted when a person can see where it
comes from — the score timeline against the labelled windows, how far normal
and anomalous scores overlap, whether training converged. The plots travel
inside the immutable version (so they always describe exactly that model), and
the same metrics and plots go to keyed Prefect artifacts so the UI shows every run
(tasks.ui says how a plot reaches the browser: presigned URL or inline PNG).

Plots use matplotlib's object API on the Agg canvas (no pyplot global state,
safe in worker threads); PNG output carries no timestamp, so identical models
give identical files and the content-addressed version id stays stable.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import artifact_key, process_lock, run_logger, store_for
from tasks.store import Store
from tasks.training.calibrate import Calibration
from tasks.training.export import EXPORT
from tasks.training.register import PLOTS, Candidate
from tasks.training.train import FIT, LATENTS, ROW_SCORES, TrainedCandidate
from tasks.ui import (
    figure_png,
    folder_url,
    image_src,
    md_image,
    md_link,
    object_url,
    publish_link,
    url_note,
)
from tasks.versions import MANIFEST, REPORT, THRESHOLD

PLOTTING = "matplotlib"
"""matplotlib's text layout (mathtext on pyparsing) is not thread-safe: two reports drawn in
threads of one process failed with a ParseException of a tick label. Drawing takes turns."""
REPORT_METRICS = ("roc_auc", "pr_auc", "vus_pr", "best_f1", "pa_f1", "pa_k_auc", "event_recall",
                  "precision", "recall", "f1", "fpr")
METRIC_NAMES = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "vus_pr": "VUS-PR", "best_f1": "best F1",
                "pa_f1": "PA-F1", "pa_k_auc": "PA%K AUC", "event_recall": "event recall",
                "precision": "precision", "recall": "recall", "f1": "F1", "fpr": "FPR"}


# -- plots (pure: arrays in, PNG bytes out) -----------------------------------------------


def _use_log(ax: Any, values: np.ndarray) -> None:
    """Reconstruction errors span decades: log scale when every value is positive."""
    if values.size and np.nanmin(values) > 0:
        ax.set_yscale("log")


def timeline_png(
    scores: np.ndarray, labels: np.ndarray, threshold: float, title: str,
    entities: np.ndarray | None = None,
) -> bytes:
    """Score per validation row, labelled rows shaded, the applied threshold as a line."""
    fig = Figure(figsize=(11, 3.6))
    ax = fig.add_subplot()
    x = np.arange(scores.size)
    ax.plot(x, scores, lw=0.6, color="#1f4e79", label="score")
    ax.fill_between(x, 0, 1, where=labels == 1, transform=ax.get_xaxis_transform(),
                    color="#d62728", alpha=0.18, step="mid", lw=0, label="labelled anomalous")
    if np.isfinite(threshold):
        ax.axhline(threshold, color="#d62728", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    if entities is not None and entities.size:
        for b in np.flatnonzero(entities[1:] != entities[:-1]) + 1:
            ax.axvline(b, color="grey", lw=0.5, alpha=0.6)
    _use_log(ax, scores[np.isfinite(scores)])
    ax.set(title=title, xlabel="validation row (entities concatenated)", ylabel="score")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def histogram_png(scores: np.ndarray, labels: np.ndarray, threshold: float, title: str) -> bytes:
    """Overlap of normal and anomalous score distributions, with the threshold."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ok = np.isfinite(scores)
    s, y = scores[ok], labels[ok]
    positive = s[s > 0]
    use_log = positive.size == s.size and s.size > 0
    values = np.log10(s) if use_log else s
    bins = np.histogram_bin_edges(values, bins=60) if values.size else 10
    for mask, name, colour in ((y == 0, "normal", "#1f4e79"), (y == 1, "anomalous", "#d62728")):
        if mask.any():
            ax.hist(values[mask], bins=bins, density=True, alpha=0.55, color=colour,
                    label=f"{name} ({int(mask.sum())} rows)")
    if np.isfinite(threshold) and (threshold > 0 or not use_log):
        ax.axvline(np.log10(threshold) if use_log else threshold, color="black", ls="--",
                   label="threshold")
    ax.set(title=title, xlabel="log10 score" if use_log else "score", ylabel="density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def training_curves_png(history: list[dict[str, float]], best_epoch: int, title: str) -> bytes:
    """Train and holdout loss per epoch; the kept (best holdout) epoch marked."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    epochs = [h["epoch"] + 1 for h in history]
    for key, colour in (("train_loss", "#1f4e79"), ("holdout_loss", "#ff7f0e")):
        values = [h.get(key, float("nan")) for h in history]
        ax.plot(epochs, values, marker="o", ms=3, color=colour, label=key.replace("_", " "))
    if best_epoch >= 0:
        ax.axvline(best_epoch + 1, color="grey", ls=":", label=f"kept epoch {best_epoch + 1}")
    if not history:
        ax.text(0.5, 0.5, "fitted in closed form: no epochs", ha="center", transform=ax.transAxes)
    ax.set(title=title, xlabel="epoch", ylabel="loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(projection (N, 2), explained variance ratio (2,)) by SVD of the centred points."""
    centred = points - points.mean(axis=0, keepdims=True)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    proj = centred @ comps.T
    if proj.shape[1] < 2:  # a 1-D latent space: plot it against zero
        proj = np.column_stack([proj, np.zeros(len(proj))])
    var = sing**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return proj, np.pad(ratio, (0, 2 - ratio.size))


def latent_png(latent: np.ndarray, labels: np.ndarray, title: str) -> bytes:
    """2-D PCA of latent means, normal and anomalous windows coloured apart."""
    proj, ratio = pca_2d(latent.astype(np.float64))
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for value, name, colour in ((0, "normal", "#1f4e79"), (1, "anomalous", "#d62728")):
        mask = labels == value
        if mask.any():
            ax.scatter(proj[mask, 0], proj[mask, 1], s=6, alpha=0.5, color=colour,
                       label=f"{name} windows ({int(mask.sum())})")
    ax.set(title=title, xlabel=f"PC1 ({ratio[0]:.0%})", ylabel=f"PC2 ({ratio[1]:.0%})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


# -- Markdown ------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:  # NaN as stored in strict JSON
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def metrics_table(metrics: dict[str, float]) -> list[str]:
    keys = [k for k in REPORT_METRICS if k in metrics]
    return ["| metric | value |", "|---|---|",
            *(f"| {METRIC_NAMES.get(k, k)} | {_fmt(metrics[k])} |" for k in keys)]


def threshold_section(threshold: dict[str, Any]) -> list[str]:
    """Every threshold method with its validation rates; the conformal guarantee spelled out."""
    lines = ["| method | threshold | precision | recall | F1 | FPR |", "|---|---|---|---|---|---|"]
    for name, m in threshold["methods"].items():
        mark = " (applied)" if name == threshold["method"] else ""
        lines.append(f"| {name}{mark} | {_fmt(m['threshold'])} | {_fmt(m['precision'])} | "
                     f"{_fmt(m['recall'])} | {_fmt(m['f1'])} | {_fmt(m['fpr'])} |")
    target = threshold["methods"].get("target_fpr", {})
    boot, guarantee = target.get("bootstrap_fpr"), target.get("guarantee")
    if boot and guarantee:
        lines += ["", (f"Target FPR {threshold['target_fpr']:.3g} (split-conformal on "
                       f"{guarantee['n']} normal validation rows): achieved {boot['achieved']:.4f} "
                       f"on them, bootstrap {boot.get('level', 0.95):.0%} interval "
                       f"[{boot['low']:.4f}, {boot['high']:.4f}] "
                       f"({boot.get('resamples', 0)} resamples).")]
        if guarantee.get("defined"):
            low, high = guarantee["conditional_fpr_95"]
            lines.append(
                f"Guarantee for new normal rows from the same distribution: expected FPR <= "
                f"{guarantee['expected_fpr_max']:.4f}; for this calibration slice the FPR lies in "
                f"[{low:.4f}, {high:.4f}] with 95% probability "
                f"(P(FPR > target) = {guarantee['p_conditional_fpr_above_target']:.2f}).")
    return lines


def export_section(export: dict[str, Any] | None) -> list[str]:
    """Whether the version ships model.onnx, and the parity measured on its probe rows."""
    if export is None:
        return ["No ONNX export was attempted."]
    if not export.get("exported"):
        return [f"No model.onnx: {export.get('reason')}. Nightly scoring needs torch for it."]
    flips = export.get("verdict_flips")
    forgiven = export.get("near_threshold_flips")
    near = f", {forgiven} within float noise of the threshold (not flips)" if forgiven else ""
    return [f"model.onnx ({export.get('bytes', 0) / 1024:,.0f} kB) checked against torch on "
            f"{export.get('probe_rows')} {export.get('probe')}: row scores differ by at most "
            f"{_fmt(export.get('row_max_rel_diff'))} x the threshold, "
            f"{'no verdict check (no threshold)' if flips is None else f'{flips} verdict flips'}"
            f"{near} ({export.get('flagged_rows')} rows flagged by torch)."]


def report_markdown(
    dataset: str, family: str, metrics: dict[str, float], threshold: dict[str, Any],
    fit: dict[str, Any], plots: list[str], export: dict[str, Any] | None = None,
) -> str:
    """The version's report.md: metrics, thresholds, training, ONNX, plots by relative path."""
    lines = [
        f"# {dataset} — {family}", "",
        "## Validation metrics (labelled validation slice)", "",
        *metrics_table(metrics), "",
        ("PA-F1 (point-adjusted) is reported for comparison with the literature only: it is "
         "close to 1 for almost any detector, random ones included. Rank by PR-AUC / VUS-PR."), "",
        "## Threshold", "", *threshold_section(threshold), "",
        "## Training", "",
        (f"- epochs run: {fit.get('epochs_run')}, kept epoch: {fit.get('best_epoch', -1) + 1}, "
         f"best holdout loss: {_fmt(fit.get('best_holdout'))}"),
        (f"- fit time: {_fmt(fit.get('fit_seconds'))} s on {fit.get('device')}, "
         f"{_fmt(fit.get('samples_per_s'))} windows/s, {fit.get('train_windows')} training windows"),
        "", "## ONNX graph", "", *export_section(export),
        "", "## Plots", "",
        *(f"![{name}]({name})" for name in plots),
    ]
    return "\n".join(lines) + "\n"


# -- the Prefect stage -----------------------------------------------------------------------


def candidate_plots(dataset: str, family: str, rows: pl.DataFrame, threshold: float,
                    fit: dict[str, Any], latents: pl.DataFrame | None) -> dict[str, bytes]:
    """All PNGs of one candidate, keyed by their name inside the version."""
    val = rows.filter(pl.col("split") == "validation")
    scores, labels = val["score"].to_numpy(), val["label"].to_numpy()
    title = f"{dataset} / {family}"
    plots = {
        "timeline.png": timeline_png(scores, labels, threshold, f"{title}: validation scores",
                                     val["entity"].rle_id().to_numpy()),
        "histogram.png": histogram_png(scores, labels, threshold,
                                       f"{title}: normal vs anomalous rows"),
        "training.png": training_curves_png(fit.get("history", []), fit.get("best_epoch", -1),
                                            f"{title}: training"),
    }
    if latents is not None and latents.height:
        z = latents.drop("label").to_numpy()
        plots["latent_pca.png"] = latent_png(z, latents["label"].to_numpy(),
                                             f"{title}: latent means, 2-D PCA")
    return {f"{PLOTS}/{name}": png for name, png in plots.items()}


PLOT_ORDER = ("timeline", "training", "histogram")  # what a reader asks first; the rest after


def _plot_rank(name: str) -> tuple[int, str]:
    stem = name.rsplit("/", 1)[-1].removesuffix(".png")
    return (PLOT_ORDER.index(stem) if stem in PLOT_ORDER else len(PLOT_ORDER), name)


@task(name="report", cache_policy=NO_CACHE)
def report_candidate(cfg: DatasetConfig, trained: TrainedCandidate,
                     calibration: Calibration) -> list[str]:
    """Plots + report.md into the candidate's folder (they join its version); returns their names."""
    store = store_for(cfg)
    fit = store.read_json(trained.file(FIT))
    threshold = json.loads(store.read_bytes(trained.file(THRESHOLD)))
    rows = pl.from_arrow(store.read_parquet(trained.file(ROW_SCORES)))
    latents = (pl.from_arrow(store.read_parquet(trained.file(LATENTS)))
               if store.exists(trained.file(LATENTS)) else None)
    with process_lock(PLOTTING):
        plots = candidate_plots(cfg.label, trained.family, rows, float(threshold["threshold"]),
                                fit, latents)
    for name, png in plots.items():
        store.write_bytes(trained.file(name), png)
    export = store.read_json(trained.file(EXPORT)) if store.exists(trained.file(EXPORT)) else None
    report = report_markdown(cfg.label, trained.family, calibration.metrics, threshold, fit,
                             sorted(plots, key=_plot_rank), export)
    store.write_bytes(trained.file(REPORT), report.encode())
    run_logger(__name__).info("%s: report with %d plots", trained.family, len(plots))
    return sorted(plots)


# -- Prefect artifacts -----------------------------------------------------------------------


def _rounded(value: float | None) -> float | None:
    return None if value is None or value != value else round(float(value), 4)


def candidates_table(candidates: list[Candidate], champion: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per family: version, champion flag, applied threshold, validation metrics."""
    return [{
        "family": c.family, "version": c.ref.version,
        "champion": c.ref.version == champion.get("version") and c.family == champion.get("family"),
        "threshold_method": c.threshold_method, "threshold": round(c.threshold, 6),
        **{k: _rounded(c.metrics.get(k)) for k in REPORT_METRICS if k in c.metrics},
    } for c in candidates]


def family_key(cfg: DatasetConfig, family: str) -> str:
    return artifact_key("train", cfg.name, family)


PLOT_LINK = re.compile(r"!\[([^\]]*)\]\((plots/[^)\s]+\.png)\)")


def family_markdown(cfg: DatasetConfig, store: Store, candidate: Candidate) -> str:
    """The version's own report.md, with each plot's relative path replaced by a URL the UI
    loads (or the PNG inline), under a line linking the version folder."""
    key = candidate.ref.key
    report = store.read_bytes(f"{key}/{REPORT}").decode()
    report = PLOT_LINK.sub(lambda m: md_image(m[1], image_src(cfg, store, f"{key}/{m[2]}")),
                           report)
    version = md_link(f"`{candidate.ref.version}`", folder_url(cfg, store, key, MANIFEST))
    header = (f"Version {version} ({store.uri(key)}) · threshold {candidate.threshold:.4g} "
              f"({candidate.threshold_method}). {url_note(cfg, store)}")
    title, _, rest = report.partition("\n")
    return f"{title}\n\n{header}\n{rest}"


def _champion_of(candidates: list[Candidate], champion: dict[str, Any]) -> Candidate | None:
    """The candidate that is champion; None when the run lost the race to another promotion."""
    return next((c for c in candidates
                 if (c.family, c.ref.version) == (champion["family"], champion["version"])), None)


def evidence_line(evidence: dict[str, Any] | None) -> list[str]:
    """Where the validation events came from: the configured slices or operators' labels."""
    if not evidence:
        return []
    labels = evidence.get("labels") or {}
    return [f"Validation evidence: {evidence.get('events_from_slices')} event(s) from the "
            f"configured slices, {evidence.get('events_from_labels')} from operators' labels, "
            f"{evidence.get('normal_rows_from_labels')} operator-labelled normal row(s) "
            f"(labels table version {labels.get('table_version', '–')}).", ""]


def selection_lines(champion: dict[str, Any]) -> list[str]:
    """How much the evidence behind the champion is worth: events, prior, margin, confidence."""
    record = champion.get("selection") or {}
    if record.get("rule") != "prior":
        return evidence_line(record.get("evidence"))
    confidence = record.get("confidence")
    margin = record.get("margin")
    return ["| chosen by | labelled events | prior (source) | challenger | margin (gain) "
            "| confidence (needed) |", "|---|---:|---|---|---:|---|",
            f"| prior rule | {record.get('events')} | {record.get('prior')} "
            f"({record.get('prior_source')}) | {record.get('challenger') or '–'} "
            f"| {_fmt(margin) if margin is not None else '–'} "
            f"| {f'{confidence:.0%}' if confidence is not None else '–'} "
            f"({record.get('required_confidence', 0):.1%}) |", "",
            f"Why: {record.get('why')}.", "", *evidence_line(record.get("evidence"))]


def run_markdown(cfg: DatasetConfig, candidates: list[Candidate], champion: dict[str, Any]) -> str:
    """The run summary shown in the Prefect UI: champion (linked, with its score timeline),
    per-family metrics, and where each family's report and plots are."""
    store = store_for(cfg)
    metric = champion["metric"]
    keys = ["roc_auc", "pr_auc", "vus_pr", "best_f1", "pa_f1", "f1", "fpr"]
    best = _champion_of(candidates, champion)
    if best is None:  # another promotion landed while this run trained: it kept that one
        best = max(candidates, key=lambda c: c.metric(metric) if c.metric(metric) == c.metric(
            metric) else float("-inf"))
        headline = (f"Champion unchanged: **{champion['family']}** `{champion['version']}` "
                    f"(this run's best, **{best.family}**, was not promoted: "
                    f"{champion.get('reason', 'the champion changed meanwhile')}).")
    else:
        version = md_link(f"`{best.ref.version}`", folder_url(cfg, store, best.ref.key, MANIFEST))
        headline = (f"Champion: **{best.family}** {version} ({METRIC_NAMES.get(metric, metric)} "
                    f"{champion['value']:.4f} on the labelled validation slice).")
    timeline = image_src(cfg, store, f"{best.ref.key}/{PLOTS}/timeline.png")
    lines = [
        f"# Training run — {cfg.name}", "", headline, "", *selection_lines(champion),
        "| family | version | " + " | ".join(METRIC_NAMES[k] for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for c in candidates:
        values = " | ".join(_fmt(c.metric(k)) for k in keys)
        artifact = md_link(c.family, "/artifacts/key/" + family_key(cfg, c.family))
        lines.append(f"| {artifact} | `{c.ref.version}` | {values} |")
    lines += ["", "PA-F1 inflates almost every detector to ~0.9+: read PR-AUC and VUS-PR.", "",
              f"## The champion's validation scores ({best.family})", "",
              md_image(f"{best.family}: validation scores", timeline), "",
              "## Each family's report and plots", "",
              ("Every family's metrics, thresholds and plots (score timeline, training curve, "
               "histogram) are its artifact (linked in the table and below); the files live in "
               f"each immutable version. {url_note(cfg, store)}"), ""]
    for c in candidates:
        report = f"{c.ref.key}/{REPORT}"
        artifact = family_key(cfg, c.family)
        lines.append(f"- **{c.family}**: artifact {md_link(artifact, '/artifacts/key/' + artifact)}"
                     f" · report.md {md_link(store.uri(report), object_url(cfg, store, report))}")
    return "\n".join(lines) + "\n"


@task(name="publish-training-artifacts", cache_policy=NO_CACHE)
def publish_training_artifacts(cfg: DatasetConfig, candidates: list[Candidate],
                               champion: dict[str, Any]) -> dict[str, str]:
    """Keyed artifacts of one training run (keys stable per dataset, so each is a series in
    the UI): the candidates table, the run report, one report with plots per family and a
    link to the champion's version."""
    store = store_for(cfg)
    keys = {"table": artifact_key("train", cfg.name, "candidates"),
            "markdown": artifact_key("train", cfg.name, "report")}
    create_table_artifact(key=keys["table"], table=candidates_table(candidates, champion),
                          description=f"nightowl: candidates of the last training run of {cfg.name}")
    create_markdown_artifact(key=keys["markdown"], markdown=run_markdown(cfg, candidates, champion),
                             description=f"nightowl: training report of {cfg.name}")
    for c in candidates:
        keys[c.family] = create_family_artifact(cfg, store, c)
    metric = METRIC_NAMES.get(champion["metric"], champion["metric"])
    best = _champion_of(candidates, champion)
    if best is not None:  # a run that lost the champion race leaves the link as it was
        keys["champion"] = publish_champion_link(cfg, store, best,
                                                 f"{metric} {champion['value']:.4f}")
    return keys


def publish_champion_link(cfg: DatasetConfig, store: Store, best: Candidate, why: str) -> str:
    """`train-<ds>-champion`: a link to the current champion's version folder."""
    return publish_link(artifact_key("train", cfg.name, "champion"),
                        folder_url(cfg, store, best.ref.key, MANIFEST),
                        f"champion of {cfg.name}: {best.family} {best.ref.version}",
                        f"The champion's version folder: {store.uri(best.ref.key)} ({why}).")


def create_family_artifact(cfg: DatasetConfig, store: Store, candidate: Candidate) -> str:
    key = family_key(cfg, candidate.family)
    create_markdown_artifact(key=key, markdown=family_markdown(cfg, store, candidate),
                             description=(f"nightowl: {candidate.family} on {cfg.name}, version "
                                          f"{candidate.ref.version}: metrics, threshold, plots"))
    return key


def retrain_markdown(cfg: DatasetConfig, store: Store, candidates: list[Candidate],
                     decision: dict[str, Any]) -> str:
    """A retraining at a glance: promoted or kept and why, both numbers on the same labelled
    slices, links to the decision record and the champion, each candidate's report."""
    metric = decision["metric"]
    name = METRIC_NAMES.get(metric, metric)
    challenger, champion = decision["challenger"], decision.get("champion")
    verdict = "**Promoted** the challenger" if decision["promoted"] else "**Kept** the champion"
    rows = [f"| challenger | {challenger['family']} | `{challenger['version']}` | "
            f"{_fmt(challenger['value'])} |"]
    if champion:
        rows.append(f"| champion | {champion['family']} | `{champion['version']}` | "
                    f"{_fmt(champion['value'])} |")
    trigger = decision.get("trigger") or {}
    lines = [f"# Retraining — {cfg.name}", "", f"{verdict}: {decision['reason']}.", "",
             f"| | family | version | {name} on the same labelled slices |", "|---|---|---|---|",
             *rows, "", *evidence_line((decision.get("selection") or {}).get("evidence")),
             (f"Trigger: {trigger.get('event', 'manual')} {trigger.get('date', '')}. Decision "
              f"record: {md_link(store.uri(decision['key']), object_url(cfg, store, decision['key']))}."),
             "", "## Candidates", ""]
    for c in candidates:
        artifact = family_key(cfg, c.family)
        lines.append(f"- {md_link(c.family, '/artifacts/key/' + artifact)} `{c.ref.version}`: "
                     f"{name} {_fmt(c.metric(metric))}")
    return "\n".join([*lines, "", url_note(cfg, store)]) + "\n"


@task(name="publish-retrain-artifacts", cache_policy=NO_CACHE)
def publish_retrain_artifacts(cfg: DatasetConfig, candidates: list[Candidate],
                              decision: dict[str, Any]) -> dict[str, str]:
    """A retraining's decision (`retrain-<ds>`), each candidate's report with plots and, when
    the challenger was promoted, the new champion's link."""
    store = store_for(cfg)
    keys = {"decision": artifact_key("retrain", cfg.name)}
    create_markdown_artifact(key=keys["decision"],
                             markdown=retrain_markdown(cfg, store, candidates, decision),
                             description=f"nightowl: retraining decision for {cfg.name}")
    for c in candidates:
        keys[c.family] = create_family_artifact(cfg, store, c)
    if decision["promoted"]:
        best = next(c for c in candidates if c.ref.version == decision["challenger"]["version"])
        keys["champion"] = publish_champion_link(cfg, store, best, "promoted by retraining")
    return keys


def fleet_table(champions: dict[str, dict[str, Any]], failed: dict[str, dict[str, str]],
                skipped: dict[str, int]) -> list[dict[str, Any]]:
    """One row per model scope: its champion and what did not train (a fleet's overview)."""
    rows = []
    for group in sorted(set(champions) | set(failed)):
        pointer = champions.get(group) or {}
        rows.append({"scope": group, "champion": pointer.get("family"),
                     "version": pointer.get("version"), "metric": pointer.get("metric"),
                     "value": _rounded(pointer.get("value")),
                     "failed": ", ".join(f"{f}: {why[:80]}" for f, why in failed.get(group, {}).items())})
    rows += [{"scope": g, "champion": None, "version": None, "metric": None, "value": None,
              "failed": f"not modelled: {n} train rows"} for g, n in skipped.items()]
    return rows


@task(name="publish-fleet-artifacts", cache_policy=NO_CACHE)
def publish_fleet_artifacts(cfg: DatasetConfig, champions: dict[str, dict[str, Any]],
                            failed: dict[str, dict[str, str]], skipped: dict[str, int]) -> str:
    """A training run over many scopes: one table, a row per entity / group (the dataset-level
    fallback model is the scope "*")."""
    key = artifact_key("train", cfg.name, "fleet")
    create_table_artifact(key=key, table=fleet_table(champions, failed, skipped),
                          description=f"nightowl: champion per {cfg.model.scope} of {cfg.name}")
    return key
