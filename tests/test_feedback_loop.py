"""Labels feed the pipeline: the data stage's relabelling, the evidence counts, the
false-alarm test and recalibration, missed incidents raising the drift event, and one
flow-level loop on the tiny synthetic config (train, label, recalibrate, retrain)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from scipy.stats import binomtest

from tasks.data.labelled import (
    OPERATOR,
    LabelledPeriod,
    OperatorLabels,
    apply_labels,
    evidence,
)
from tasks.feedback.adapt import FalseAlarmTest, binomial_tail, recalibrated_threshold
from tests.labelled import ENTITY, ingested
from tests.shared_data import DATA, needs_data

T0 = datetime(2026, 1, 5)


def _frame(hours: int = 10) -> pl.DataFrame:
    """Hourly rows of two entities: the first 6 hours train, the rest none (outside)."""
    ts = [T0 + timedelta(hours=h) for h in range(hours)]
    return pl.DataFrame({
        "timestamp": ts * 2, "entity": ["a"] * hours + ["b"] * hours,
        "label": pl.Series([0] * (2 * hours), dtype=pl.Int8),
        "split": (["train"] * 6 + ["none"] * (hours - 6)) * 2})


def test_labels_relabel_rows_and_move_those_outside_train_to_validation() -> None:
    labels = OperatorLabels((
        LabelledPeriod("a", T0 + timedelta(hours=1), T0 + timedelta(hours=2), "anomaly"),
        LabelledPeriod("a", T0 + timedelta(hours=7), T0 + timedelta(hours=8), "normal"),
        LabelledPeriod("b", T0 + timedelta(hours=8), T0 + timedelta(hours=9), "anomaly"),
        LabelledPeriod("b", T0 + timedelta(hours=9), T0 + timedelta(hours=9), "normal"),
    ), table_version=4)
    out = apply_labels(_frame(), labels, T0, T0 + timedelta(hours=6))

    a, b = out.filter(pl.col("entity") == "a"), out.filter(pl.col("entity") == "b")
    assert a["label"].to_list() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert a["split"].to_list()[:6] == ["train"] * 6  # a train-range anomaly stays train: excluded
    assert a["split"].to_list()[6:] == ["none", "validation", "validation", "none"]
    assert b["label"].to_list()[8:] == [1, 1]  # the anomaly wins where the two overlap
    assert b["split"].to_list()[8:] == ["validation", "validation"]
    assert out[OPERATOR].sum() == 2 + 2 + 2
    assert out.schema["label"] == pl.Int8

    found = evidence(out, labels)
    assert (found.events_from_labels, found.normal_rows_from_labels) == (1, 2)
    assert found.labels == {"table_version": 4, "periods": 4, "anomaly": 2, "normal": 2}


def test_evidence_tells_configured_events_from_labelled_ones() -> None:
    frame = _frame().with_columns(
        split=pl.lit("validation"),
        label=pl.Series([0, 1, 1, 0, 0, 0, 0, 1, 0, 0] * 2, dtype=pl.Int8))
    labels = OperatorLabels((LabelledPeriod("b", T0 + timedelta(hours=4),
                                            T0 + timedelta(hours=4), "anomaly"),))
    found = evidence(apply_labels(frame, labels, T0, T0), labels)
    assert found.events_from_slices == 4  # two per entity from the ground truth
    assert found.events_from_labels == 1


@pytest.mark.parametrize(("alarms", "rows", "exceeds"), [(5, 40, True), (2, 40, False),
                                                         (3, 5, False)])
def test_the_false_alarm_test_is_a_one_sided_binomial_at_the_stated_confidence(
        alarms: int, rows: int, exceeds: bool) -> None:
    p = binomtest(alarms, rows, 0.05, alternative="greater").pvalue
    test = FalseAlarmTest(ENTITY, [], rows, alarms, 0.05, p, 0.95, 10, 1.0, 2.0)
    assert test.exceeds is exceeds  # 3 of 5 breaks the rate, but 5 rows are too few to say
    assert test.to_json()["statement"].startswith(f"P(X >= {alarms} | n={rows}, p=0.05)")


@pytest.mark.parametrize(("k", "n", "p"), [(0, 10, 0.05), (1, 48, 0.002), (5, 40, 0.05),
                                           (48, 48, 0.002), (300, 20000, 0.01), (7, 5, 0.1)])
def test_the_binomial_tail_matches_scipy(k: int, n: int, p: float) -> None:
    expected = binomtest(k, n, p, alternative="greater").pvalue if k <= n else 0.0
    assert binomial_tail(k, n, p) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_recalibration_raises_only_the_tested_entity_and_keeps_the_pooled_threshold() -> None:
    threshold = {"threshold": 1.0, "method": "percentile", "normaliser": {"reference": [0.1]},
                 "per_entity": {"other": {"threshold": 3.0, "method": "percentile"}}}
    moved = FalseAlarmTest(ENTITY, ["2026-01-09"], 40, 6, 0.05, 0.001, 0.95, 10, 1.0, 1.7)
    out = recalibrated_threshold(threshold, [moved], "now")
    assert out["threshold"] == 1.0 and out["per_entity"]["other"]["threshold"] == 3.0
    mine = out["per_entity"][ENTITY]
    assert mine["threshold"] == 1.7 and mine["recalibrated"]["from"] == 1.0
    assert mine["normaliser"] == {"reference": [0.1]}  # p-values keep their reference


def test_the_data_stage_applies_labels_and_counts_the_evidence(tmp_path) -> None:
    """Train-range anomalies leave training; labelled rows after the range become validation."""
    from tasks.data.prepare import scale_dataset, window_dataset
    from tasks.training.train import training_starts

    cfg, _ = ingested(tmp_path)
    plain = scale_dataset.fn(cfg)
    labels = OperatorLabels((
        LabelledPeriod(ENTITY, datetime(2026, 1, 6, 1), datetime(2026, 1, 6, 3), "anomaly"),
        LabelledPeriod(ENTITY, datetime(2026, 1, 10, 2), datetime(2026, 1, 10, 4), "normal"),
        LabelledPeriod(ENTITY, datetime(2026, 1, 10, 10), datetime(2026, 1, 10, 11), "anomaly"),
        LabelledPeriod("machine-99", datetime(2026, 1, 10, 10), datetime(2026, 1, 10, 11),
                       "anomaly"),  # not this scope's entity: no effect
    ), table_version=2)
    scaled = scale_dataset.fn(cfg, labels)
    prepared = window_dataset.fn(cfg, scaled)

    rows = pl.from_arrow(tasks_store(cfg).read_parquet(scaled.scaled_key))
    after_range = rows.filter(pl.col("timestamp") >= datetime(2026, 1, 10))
    assert after_range.filter(pl.col("split") == "validation").height == 5 + 3
    assert after_range.filter((pl.col("split") == "validation") & (pl.col("label") == 1)).height == 3
    in_train = rows.filter((pl.col("timestamp") >= datetime(2026, 1, 6, 1))
                           & (pl.col("timestamp") <= datetime(2026, 1, 6, 3)))
    assert in_train["split"].to_list() == ["train"] * 5 and in_train["label"].sum() == 5
    assert plain.evidence is not None and scaled.evidence is not None
    assert scaled.evidence["events_from_labels"] == 1
    assert scaled.evidence["normal_rows_from_labels"] == 5
    assert scaled.evidence["events_from_slices"] == plain.evidence["events_from_slices"]
    assert scaled.evidence["labels"]["table_version"] == 2
    assert prepared.evidence == scaled.evidence and scaled.scaled_key != plain.scaled_key

    index = pl.from_arrow(tasks_store(cfg).read_parquet(prepared.windows_key))
    starts = training_starts(index, cfg.splits.train_on_normal_only).numpy()
    labelled = np.flatnonzero(((rows["timestamp"] >= datetime(2026, 1, 6, 1))
                               & (rows["timestamp"] <= datetime(2026, 1, 6, 3))).to_numpy())
    covered = {int(s) + k for s in starts for k in range(cfg.window.length)}
    assert cfg.splits.train_on_normal_only and not covered & set(labelled.tolist())


def tasks_store(cfg):
    from tasks.common import store_for

    return store_for(cfg)



def test_the_feedback_artifact_counts_this_weeks_labels_and_alert_precision(tmp_path) -> None:
    from tasks.feedback.feedback_report import alert_precision, feedback_markdown
    from tasks.feedback.labels import current_labels, label

    cfg, _ = ingested(tmp_path)
    for hour, verdict in ((1, "anomaly"), (5, "normal"), (9, "normal")):  # three alerts answered
        at = datetime(2026, 1, 6, hour)
        label(cfg, ENTITY, at, at + timedelta(hours=1), verdict,
              segment=f"{ENTITY}@{at.isoformat()}")
    label(cfg, ENTITY, "2026-01-07T01:00:00", "2026-01-07T02:00:00", "anomaly")  # a missed one
    label(cfg, ENTITY, "2026-01-07T05:00:00", "2026-01-07T06:00:00", "unsure",
          segment=f"{ENTITY}@2026-01-07T05:00:00")
    labels = current_labels(cfg)

    (row,) = alert_precision(labels).iter_rows(named=True)
    assert (row["week"], row["reviewed"], row["confirmed"], row["dismissed"]) == (
        "2026-W02", 3, 1, 2)
    assert row["precision"] == pytest.approx(1 / 3)
    now = labels["recorded_at"].max()
    text = feedback_markdown(cfg, labels, now)
    assert "5 label(s) recorded in the 7 days" in text
    assert "| anomaly | cli | 2 |" in text and "| normal | cli | 2 |" in text
    assert f"| {ENTITY} | 2026-W02 | 3 | 1 | 2 | 0.33 |" in text
    assert "0 label(s) recorded" in feedback_markdown(cfg, labels, now + timedelta(days=8))

# -- the loop on the tiny synthetic config: train, label, recalibrate, retrain -------------


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory):
    """A tiny trained champion whose FPR promise (0.2 %) is stricter than its calibration
    (the 95th percentile of train scores): reviewed false alarms will break it."""
    import torch

    from flows.train import train_flow
    from tasks.data.synthetic import materialize

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("loop")
    from schemas.config import parse_config
    from tests.tiny import tiny_config, write_config

    data = tiny_config(root, threshold={"target_fpr": 0.002},
                       feedback={"missed_incidents": 2})
    materialize(parse_config(data).source.synthetic, data["source"]["path"])
    config = write_config(root, data)
    result = train_flow(config)
    return config, result


def _day_scores(cfg, day: datetime) -> pl.DataFrame:
    from tasks.common import store_for
    from tasks.feedback.adapt import scored
    from tasks.scoring import version_scorer
    from tasks.versions import current_champion

    store = store_for(cfg)
    version = version_scorer(cfg, current_champion(store, cfg.scope_name), store)
    return scored(store, cfg, version, ENTITY, day, day + timedelta(days=1))


def test_the_loop_recalibrates_raises_retraining_and_retrains_on_the_labels(trained) -> None:
    from flows.retrain import retrain_flow
    from schemas.config import load_config
    from tasks.common import store_for
    from tasks.feedback.adapt import check_feedback
    from tasks.feedback.labels import label, labels_key
    from tasks.nightly.drift import last_event_key
    from tasks.training.lineage import training_set
    from tasks.versions import VersionRef, load_model, read_champion

    config, first = trained
    cfg = load_config(config)
    store = store_for(cfg)
    before = read_champion(store, cfg.scope_name)
    assert first["champion"]["selection"]["evidence"]["events_from_labels"] == 0

    # The operator dismisses every alert of the day with the most: false alarms.
    days = [datetime(2026, 1, 5) + timedelta(days=d) for d in range(6)]
    by_day = {d: _day_scores(cfg, d) for d in days}
    day = max(days, key=lambda d: int((by_day[d]["score"] > by_day[d]["limit"]).sum()))
    alarms = by_day[day].filter(pl.col("score") > pl.col("limit"))
    assert alarms.height >= 2  # needs alerts to dismiss (a 95th-percentile threshold has them)
    for ts in alarms["timestamp"]:
        label(cfg, ENTITY, ts, ts, "normal", segment=f"{ENTITY}@{ts.isoformat()}")
    # ... and reports two incidents the champion scored wholly below its threshold.
    other = next(d for d in days if d != day and d.day >= 6)
    quiet = by_day[other].filter(pl.col("score").is_finite()
                                 & (pl.col("score") < pl.col("limit"))).head(2)
    for ts in quiet["timestamp"]:
        label(cfg, ENTITY, ts, ts, "anomaly", note="missed")
    store.delete(last_event_key(cfg)) if store.exists(last_event_key(cfg)) else None

    check = check_feedback.fn(cfg, config)

    (test,) = check.tests
    assert test["normal_rows"] == by_day[day]["score"].is_finite().sum()
    assert test["false_alarms"] == alarms.height and test["exceeds"] is True
    recal = check.recalibrated
    assert recal is not None and recal["promoted"] is True
    after = read_champion(store, cfg.scope_name)
    assert after["generation"] == before["generation"] + 1
    assert after["promoted_by"] == "recalibration" and after["recalibrated_from"] == before["version"]
    assert after["family"] == before["family"] and after["version"] != before["version"]
    assert store.read_json(recal["key"])["kind"] == "recalibration"
    new = load_model(store, champion_ref_of(after), None).threshold["per_entity"][ENTITY]
    assert new["threshold"] > test["threshold"]  # raised, never lowered
    rescored = _day_scores(cfg, day)  # the same rows, the recalibrated threshold
    assert int((rescored["score"] > rescored["limit"]).sum()) < alarms.height
    # The two missed incidents raised the drift event (-> the retrain deployment).
    assert [m["entity"] for m in check.missed] == [ENTITY, ENTITY]
    assert check.event not in (None, "suppressed (cooldown)")
    assert store.read_json(last_event_key(cfg))["event_id"] == check.event
    # A second check on the same labels moves nothing: the threshold already meets them.
    assert check_feedback.fn(cfg, config).recalibrated is None

    # Retraining validates on the labelled rows too, and says how many events they gave.
    label(cfg, ENTITY, datetime(2026, 1, 5, 12), datetime(2026, 1, 5, 14), "anomaly")
    result = retrain_flow(config, as_of=datetime(2026, 1, 11).date())
    decision = store.read_json(result["decision"]["key"])
    evidence = decision["selection"]["evidence"]
    version = tables_version(store, labels_key(cfg))
    assert evidence["labels"] == {"table_version": version, "periods": alarms.height + 3,
                                  "anomaly": 3, "normal": alarms.height}
    assert evidence["events_from_labels"] >= 1  # 01-05 lies before the rolling train range
    # The training run got the labels as a table version, not as a list in Prefect's database.
    assert latest_candidates_parameters()["labels_at"] == version
    rolling_train = datetime(2026, 1, 6) <= day < datetime(2026, 1, 9)  # [as_of - 5d, as_of - 2d)
    assert evidence["normal_rows_from_labels"] == (0 if rolling_train else alarms.height)
    # Lineage: the challenger's training set is rebuilt with the labels as they stood.
    label(cfg, ENTITY, datetime(2026, 1, 5, 16), datetime(2026, 1, 5, 17), "anomaly")  # later
    rows = training_set(store, cfg, VersionRef(**{k: decision["challenger"][k] for k in
                                                  ("dataset", "family", "version")}))
    early = rows.filter(pl.col("timestamp") < datetime(2026, 1, 6))
    assert early.filter(pl.col("label") == 1)["timestamp"].to_list() == [
        datetime(2026, 1, 5, 12) + timedelta(minutes=30 * i) for i in range(5)]
    assert set(early.filter(pl.col(OPERATOR) == 1)["split"]) == {"validation"}


def latest_candidates_parameters() -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["nightowl-candidates"])),
            sort=FlowRunSort.START_TIME_DESC, limit=1)
    return run.parameters


def champion_ref_of(pointer):
    from tasks.versions import champion_ref

    return champion_ref(pointer)


def tables_version(store, key):
    from tasks.data import tables

    return tables.version_of(store, key)


def test_the_reports_say_where_the_evidence_came_from() -> None:
    from tasks.training.training_report import evidence_line, selection_lines

    evidence = {"events_from_slices": 2, "events_from_labels": 3, "normal_rows_from_labels": 40,
                "labels": {"table_version": 7}}
    (line, _) = evidence_line(evidence)
    assert line.startswith("Validation evidence: 2 event(s) from the configured slices, 3 from "
                           "operators' labels, 40 operator-labelled normal row(s)")
    assert "version 7" in line and evidence_line(None) == []
    prior = selection_lines({"selection": {"rule": "prior", "events": 5, "evidence": evidence}})
    assert line in prior and line in selection_lines({"selection": {"evidence": evidence}})


def test_the_replay_operator_sees_alert_segments_with_their_truth() -> None:
    from benchmarks.feedback_replay import alert_segments

    ts = [T0 + timedelta(minutes=i) for i in range(8)]
    night = pl.DataFrame({"timestamp": ts, "entity": ["a"] * 8,
                          "label": [0, 0, 1, 0, 0, 0, 0, 0],
                          "score": [0.1, 2.0, 3.0, 0.1, float("nan"), 1.5, 1.5, 0.2],
                          "limit": [1.0] * 8})
    first, second = alert_segments(night)
    assert (first["start"], first["end"], first["peak"], first["true"]) == (ts[1], ts[2], 3.0, True)
    assert (second["start"], second["end"], second["true"]) == (ts[5], ts[6], False)


def test_the_replay_summary_pools_alerts_and_averages_later_nights() -> None:
    from benchmarks.feedback_replay import markdown, summary

    def night(alerts: int, true: int, later: float | None, **extra) -> dict:
        return {"night": "n", "alerts": alerts, "true_alerts": true, "labels": min(alerts, 5),
                "precision": true / alerts if alerts else None, "later_pr_auc": later, **extra}

    run = {"series": "smd:m", "on": {"nights": [night(3, 2, 0.4, retrain={"promoted": True}),
                                                night(1, 1, None)]},
           "off": {"nights": [night(4, 1, 0.2), night(0, 0, 0.6, retrain={"promoted": False})]}}
    run["summary"] = summary(run)
    assert run["summary"]["on"] == {"alerts": 4, "precision": 0.75, "later_pr_auc": 0.4,
                                    "promotions": 1, "labels": 4}
    assert run["summary"]["off"]["precision"] == 0.25
    assert run["summary"]["off"]["later_pr_auc"] == pytest.approx(0.4)
    text = markdown({"command": "c", "seconds": 1.0, "runs": [run]})
    assert "| smd:m | 4 / 4 | 0.750 / 0.250 | 0.400 / 0.400 | 1 / 0 | 4 |" in text
    assert "| n | 3 / 4 | 0.667 / 0.250 | 3 | 0.400 / 0.200 | promoted / – |" in text


def test_the_replay_merges_a_later_run_into_the_recorded_report() -> None:
    from benchmarks.feedback_replay import commands_of, merged

    def run(series: str, alerts: int) -> dict:
        return {"series": series, "summary": {"on": {"alerts": alerts}}}

    earlier = {"command": "a", "seconds": 2.0, "runs": [run("smd:m", 1), run("nab:x", 2)]}
    later = {"command": "b", "seconds": 3.0, "runs": [run("nab:x", 5), run("nab:y", 6)]}
    report = merged(earlier, later)
    assert [(r["series"], r["summary"]["on"]["alerts"]) for r in report["runs"]] == [
        ("smd:m", 1), ("nab:x", 5), ("nab:y", 6)]
    assert commands_of(report) == [
        {"command": "a", "seconds": 2.0, "series": ["smd:m"]},
        {"command": "b", "seconds": 3.0, "series": ["nab:x", "nab:y"]}]
    again = merged(report, {"command": "c", "seconds": 1.0, "runs": [run("smd:m", 9)]})
    assert [c["command"] for c in commands_of(again)] == ["b", "c"]
    assert [(r["series"], r["summary"]["on"]["alerts"]) for r in again["runs"]] == [
        ("smd:m", 9), ("nab:x", 5), ("nab:y", 6)]


@needs_data
def test_the_replay_reads_nab_through_its_loader_with_a_rolling_window_that_holds_rows(
        tmp_path) -> None:
    """NAB is univariate with 5- or 30-minute clocks: the recorded defaults (10 train + 4
    validation days, 8 nights, retrain every 2) must leave rows in both sides of the first
    retraining's window of every NAB dev series."""
    from benchmarks.dev_series import NAB_NAMES
    from benchmarks.feedback_replay import arguments, night_starts, replay_config
    from tasks.training.promote import rolling_splits

    args = arguments(["--data", str(DATA)])
    for name in NAB_NAMES:
        cfg = replay_config("nab", name.split("/")[-1], tmp_path / name, True, args)
        assert cfg.columns.features == ["value"] and cfg.feedback.use_labels
        assert [f.name for f in cfg.families] == ["dense_ae"]
        nights, span = night_starts(cfg, args.nights)
        assert len(nights) == 8 and nights[0] == cfg.splits.score.start
        window = rolling_splits(cfg, nights[args.cadence - 1] + span)
        first_row = cfg.splits.train.start
        assert window.train.end - max(window.train.start, first_row) >= timedelta(days=3), name
        assert window.validation[0].end - window.validation[0].start == timedelta(days=4)
