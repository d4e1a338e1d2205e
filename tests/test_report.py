"""Reports: PNG plots and Markdown stored with a version; keyed Prefect artifacts per training run."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.config import ThresholdConfig, parse_config
from tasks.common import artifact_key
from tasks.evaluation.metrics import evaluate
from tasks.evaluation.thresholds import calibrate
from tasks.store import Store
from tasks.training.register import Candidate, choose_champion
from tasks.training.training_report import (
    candidates_table,
    histogram_png,
    latent_png,
    pca_2d,
    publish_training_artifacts,
    report_markdown,
    timeline_png,
    training_curves_png,
)
from tasks.ui import PNG_MAGIC
from tasks.versions import VersionRef, read_champion, register_version


def _cfg(tmp_path, metric: str = "pr_auc"):
    return parse_config({
        "name": "rep_ds",
        "source": {"path": str(tmp_path / "raw" / "*.csv")},
        "columns": {"features": ["a", "b"]},
        "splits": {"train": {"start": "2026-01-01", "end": "2026-01-02"},
                   "validation": [{"start": "2026-01-02", "end": "2026-01-03"}]},
        "families": [{"name": "dense_ae"}],
        "selection": {"metric": metric},
        "store": {"root": f"file://{tmp_path}/store"},
    })


def _evaluation(seed: int, shift: float) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.zeros(600, dtype=np.int8)
    labels[200:230] = labels[400:420] = 1
    scores = rng.gamma(2.0, size=600) + shift * labels
    threshold = calibrate(rng.gamma(2.0, size=400), scores, labels, ThresholdConfig())
    fit = {"family": "dense_ae", "epochs_run": 3, "best_epoch": 1, "best_holdout": 0.5,
           "fit_seconds": 1.2, "device": "cpu", "samples_per_s": 900.0, "train_windows": 1000,
           "history": [{"epoch": e, "train_loss": 1 / (e + 1), "holdout_loss": 1.1 / (e + 1)}
                       for e in range(3)]}
    metrics = evaluate(labels, scores, threshold["threshold"], window=8)
    return {"labels": labels, "scores": scores, "threshold": threshold, "metrics": metrics,
            "fit": fit}


def test_plots_are_pngs_and_deterministic():
    ev = _evaluation(0, 4.0)
    t = ev["threshold"]["threshold"]
    pngs = [
        timeline_png(ev["scores"], ev["labels"], t, "timeline", np.repeat([0, 1], 300)),
        histogram_png(ev["scores"], ev["labels"], t, "hist"),
        training_curves_png(ev["fit"]["history"], 1, "training"),
        training_curves_png([], -1, "closed form"),
        latent_png(np.random.default_rng(1).normal(size=(300, 8)), ev["labels"][:300], "latent"),
    ]
    assert all(p.startswith(PNG_MAGIC) and len(p) > 5000 for p in pngs)
    # identical inputs give identical bytes, so content-addressed versions stay stable
    assert histogram_png(ev["scores"], ev["labels"], t, "hist") == pngs[1]


def test_pca_2d_finds_the_dominant_directions():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(2000, 5)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1])
    proj, ratio = pca_2d(points)
    assert proj.shape == (2000, 2)
    assert ratio[0] == pytest.approx(100 / 109.03, abs=0.02) and ratio[0] > ratio[1] > 0.05
    assert pca_2d(points[:, :1])[0].shape == (2000, 2)  # a 1-D latent space still plots


def test_report_markdown_names_metrics_threshold_guarantee_and_plots():
    ev = _evaluation(0, 4.0)
    md = report_markdown("rep_ds", "dense_ae", ev["metrics"], ev["threshold"], ev["fit"],
                         ["plots/histogram.png", "plots/timeline.png"])
    assert f"| PR-AUC | {ev['metrics']['pr_auc']:.4g} |" in md
    assert "| VUS-PR |" in md and "PA-F1 (point-adjusted)" in md
    assert "target_fpr (applied)" in md and "youden" in md
    boot = ev["threshold"]["methods"]["target_fpr"]["bootstrap_fpr"]
    assert f"[{boot['low']:.4f}, {boot['high']:.4f}]" in md
    assert "![plots/timeline.png](plots/timeline.png)" in md
    assert "No ONNX export was attempted." in md


def test_report_says_whether_the_version_ships_a_checked_graph():
    ev = _evaluation(0, 4.0)
    shipped = {"exported": True, "bytes": 204800, "probe_rows": 2032, "probe": "validation rows",
               "row_max_rel_diff": 2.5e-7, "verdict_flips": 0, "flagged_rows": 41}
    md = report_markdown("rep_ds", "dense_ae", ev["metrics"], ev["threshold"], ev["fit"], [],
                         shipped)
    assert ("model.onnx (200 kB) checked against torch on 2032 validation rows: row scores "
            "differ by at most 2.5e-07 x the threshold, 0 verdict flips (41 rows flagged") in md
    refused = {"exported": False, "reason": "2 of 2032 probe rows change verdict"}
    md = report_markdown("rep_ds", "dense_ae", ev["metrics"], ev["threshold"], ev["fit"], [],
                         refused)
    assert "No model.onnx: 2 of 2032 probe rows change verdict. Nightly scoring needs torch" in md


def test_artifact_keys_are_prefect_safe():
    assert artifact_key("train", "smd_machine-2-1-candidates") == "train-smd-machine-2-1-candidates"
    assert artifact_key("train", "Odds__Cardio") == "train-odds-cardio"


def _candidate(family: str, version: str, metrics: dict, threshold: float = 1.0) -> Candidate:
    return Candidate(VersionRef("rep_ds", family, version), metrics, threshold, "target_fpr", 1.0)


def test_champion_by_configured_metric_keeps_every_candidates_metrics(tmp_path):
    cfg = _cfg(tmp_path, metric="vus_pr")
    a = {"pr_auc": 0.9, "vus_pr": 0.4, "roc_auc": 0.9}
    b = {"pr_auc": 0.5, "vus_pr": 0.6, "roc_auc": 0.8}
    pointer = choose_champion.fn(cfg, [_candidate("fa", "v1", a), _candidate("fb", "v2", b)])
    assert (pointer["family"], pointer["metric"], pointer["value"]) == ("fb", "vus_pr", 0.6)
    stored = read_champion(Store(cfg.store.root), "rep_ds")
    assert stored["candidates"]["fa"]["metrics"] == a and stored["candidates"]["fb"]["metrics"] == b


def _registered(store: Store, family: str, ev: dict) -> VersionRef:
    """A version holding what the report stage writes: report.md and its plots."""
    t = ev["threshold"]["threshold"]
    plots = {"plots/timeline.png": timeline_png(ev["scores"], ev["labels"], t, family),
             "plots/training.png": training_curves_png(ev["fit"]["history"], 1, family)}
    report = report_markdown("rep_ds", family, ev["metrics"], ev["threshold"], ev["fit"],
                             list(plots))
    return register_version(store, "rep_ds", family, {**plots, "report.md": report.encode()})


def test_artifacts_are_created_in_a_flow_with_stable_keys(tmp_path, prefect_harness):
    from prefect import flow

    from tests.artifacts import image_urls, latest_artifacts, link_urls, png_at

    cfg = _cfg(tmp_path)
    store = Store(cfg.store.root)
    evaluations = [_evaluation(0, 4.0), _evaluation(1, 1.0)]
    refs = [_registered(store, family, ev) for family, ev in zip(["dense_ae", "vae"], evaluations)]
    candidates = [Candidate(ref, ev["metrics"], ev["threshold"]["threshold"], "target_fpr", 1.0)
                  for ref, ev in zip(refs, evaluations)]
    champion = {"family": "dense_ae", "version": refs[0].version, "metric": "pr_auc",
                "value": evaluations[0]["metrics"]["pr_auc"]}

    @flow(name="report-artifacts-test")
    def run() -> dict[str, str]:
        return publish_training_artifacts(cfg, candidates, champion)

    keys = run()
    assert keys == {"table": "train-rep-ds-candidates", "markdown": "train-rep-ds-report",
                    "dense_ae": "train-rep-ds-dense-ae", "vae": "train-rep-ds-vae",
                    "champion": "train-rep-ds-champion"}
    found = latest_artifacts(list(keys.values()))
    assert {k: a.type for k, a in found.items()} == {
        "train-rep-ds-candidates": "table", "train-rep-ds-report": "markdown",
        "train-rep-ds-dense-ae": "markdown", "train-rep-ds-vae": "markdown",
        "train-rep-ds-champion": "markdown"}
    table, markdown = found[keys["table"]], found[keys["markdown"]]
    rows = candidates_table(candidates, champion)
    assert [r["family"] for r in rows] == ["dense_ae", "vae"] and rows[0]["champion"]
    assert "dense_ae" in str(table.data) and refs[1].version in str(table.data)
    assert "Champion: **dense_ae**" in markdown.data
    assert f"rep_ds/dense_ae/{refs[0].version}/report.md" in markdown.data
    assert "[vae](/artifacts/key/train-rep-ds-vae)" in markdown.data  # the table links each family
    # the champion's timeline in the run report, each version's plots in its family's report
    assert png_at(image_urls(markdown.data)[0]) == store.read_bytes(
        f"{refs[0].key}/plots/timeline.png")
    vae = found[keys["vae"]].data
    assert [png_at(u) for u in image_urls(vae)] == [
        store.read_bytes(f"{refs[1].key}/{name}") for name in ("plots/timeline.png",
                                                               "plots/training.png")]
    assert "## Validation metrics" in vae and "plots/timeline.png)" not in vae  # no bare paths
    assert link_urls(found[keys["champion"]].data) == [store.uri(refs[0].key) + "/"]
