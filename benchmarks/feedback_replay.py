"""Replay a dev series night by night, with operators' feedback on and off (issue 21).

Series: SMD machine-2-1 and ASD omi-1..6 (multivariate, SMD's loader) and the three NAB dev
series of benchmarks/dev_series.py (univariate, NAB's loader: feature "value", the loader's
window of 16). The score split is cut into `--nights` equal stretches ("nights", see
`night_starts`: a day on SMD's 1-minute clock and NAB's ec2_cpu, a few hours of ASD's short
test files, ~5 days of NAB's machine_temperature, ~11 days of nyc_taxi's 30-minute clock).
Each night is scored by the champion (tasks.scoring's one path, as the nightly run scores
it); its alerts are the runs of rows over the threshold. With feedback on, a simulated
operator reviews the night's top `--review-budget` alert segments by peak score / threshold
and answers from the ground truth (any labelled row: `anomaly`, else `normal`), written to
the real labels table; the operator never sees a night before it is scored. Every
`--cadence` nights both arms retrain on the rolling window (train_days + validation_days up
to the night's end, tasks.training.promote as the retrain flow does); with feedback on, the
labels feed that retraining (confirmed anomalies leave training, labelled rows join
validation) and the feedback check runs first (recalibration). Reported per night: the
alert precision (alert segments touching a true anomaly / alert segments) and the
champion's PR-AUC on the nights still to come.

The window defaults (10 train + 4 validation days) serve every kind: on NAB's clocks the
first retraining still has 3.9 to 10 days of train rows and a full validation window (tests
check it). NAB series carry few labelled windows (ec2_cpu 1, split by the validation /
score cut so its score part lies in the first night; machine_temperature 2 in the score
split; nyc_taxi 4), so many NAB validation windows hold no anomaly: without labels the
retraining cannot compare (PR-AUC undefined, the champion is kept), and later-night PR-AUC
is undefined once the last labelled window has passed (always, on ec2_cpu).

    .venv/bin/python benchmarks/feedback_replay.py --series smd:machine-2-1,asd:omi-1
    .venv/bin/python benchmarks/feedback_replay.py --series nab:nyc_taxi --merge
    .venv/bin/python benchmarks/feedback_replay.py --quick   # 3 nights, 1 epoch

Writes benchmarks/results/feedback_replay.json and .md (`--merge`: adds the series to the
report there, so runs too long for one command make one table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _key, _value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("GX_ANALYTICS_ENABLED", "false"),
                     ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")):
    os.environ.setdefault(_key, _value)

from benchmarks.common import SHARED_DATA  # noqa: E402
from flows.candidates import train_candidates  # noqa: E402
from schemas.config import DatasetConfig, parse_config  # noqa: E402
from tasks.common import store_for  # noqa: E402
from tasks.data import public_data as loaders  # noqa: E402
from tasks.data.ingest import ingest_source  # noqa: E402
from tasks.data.layer import load_validated  # noqa: E402
from tasks.evaluation.metrics import pr_auc, segments  # noqa: E402
from tasks.evaluation.normalise import thresholds_by_entity  # noqa: E402
from tasks.feedback.adapt import check_feedback  # noqa: E402
from tasks.feedback.labels import LabelRequest, record_labels, training_labels  # noqa: E402
from tasks.scoring import score_version, validated_context, version_scorer  # noqa: E402
from tasks.training.promote import promote_if_better, rolling_splits, with_splits  # noqa: E402
from tasks.training.register import choose_champion  # noqa: E402
from tasks.versions import current_champion  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# kind -> (loader, its folder in the shared data): ASD ships in SMD's layout; NAB is one
# univariate CSV a series with its labelled windows.
LOADERS: dict[str, tuple[Callable[..., tuple[DatasetConfig, Any]], str]] = {
    "smd": (loaders.load_smd, "smd"), "asd": (loaders.load_smd, "asd"),
    "nab": (loaders.load_nab, "nab"),
}


def replay_config(kind: str, name: str, work: Path, feedback: bool, args: argparse.Namespace
                  ) -> DatasetConfig:
    """The loader's config with one small family, the rolling window and feedback on / off."""
    load, folder = LOADERS[kind]
    cfg, _ = load(args.data / folder, name, work / "raw")
    data = cfg.model_dump()
    data["store"]["root"] = f"file://{work / 'store'}"
    data["families"] = [{"name": "dense_ae"}]
    data["training"].update(epochs=args.epochs, max_train_windows=args.max_train_windows,
                            cpu_threads=2)
    data["retrain"].update(train_days=args.train_days, validation_days=args.validation_days)
    data["feedback"].update(use_labels=feedback, missed_incidents=10**6)
    return parse_config(data, origin=f"replay({name}, feedback={'on' if feedback else 'off'})")


def scored_rows(cfg: DatasetConfig, start: datetime, end: datetime) -> pl.DataFrame:
    """The champion's scores, thresholds and truth of the rows in [start, end)."""
    store = store_for(cfg)
    version = version_scorer(cfg, current_champion(store, cfg.scope_name), store)
    out = score_version(version, load_validated(store, cfg, start, end),
                        validated_context(store, cfg, start, None, version.loaded.window))
    limits, _ = thresholds_by_entity(out.scores, out.rows["entity"].to_numpy(),
                                     version.loaded.threshold)
    return out.rows.select("timestamp", "entity", "label").with_columns(
        score=pl.Series(out.scores, dtype=pl.Float64), limit=pl.Series(limits))


def alert_segments(night: pl.DataFrame) -> list[dict[str, Any]]:
    """The night's alerts: runs of rows over the threshold, with peak ratio and truth."""
    scores, limits = night["score"].to_numpy(), night["limit"].to_numpy()
    over = np.nan_to_num(scores, nan=-np.inf) > limits
    starts, ends = segments(over)
    ts, truth, entity = night["timestamp"], night["label"].to_numpy(), night["entity"]
    return [{"entity": entity[int(s)], "start": ts[int(s)], "end": ts[int(e) - 1],
             "peak": float(np.max(scores[s:e] / limits[s:e])), "true": bool(truth[s:e].any())}
            for s, e in zip(starts, ends, strict=True)]


def review(cfg: DatasetConfig, alerts: list[dict[str, Any]], budget: int, night: str) -> int:
    """The simulated operator: the top alerts by peak, answered from the ground truth."""
    top = sorted(alerts, key=lambda a: -a["peak"])[:budget]
    if not top:
        return 0
    requests = [LabelRequest(entity=a["entity"], start=a["start"], end=a["end"],
                             verdict="anomaly" if a["true"] else "normal", who="replay",
                             segment=f"{a['entity']}@{a['start'].isoformat()}",
                             key=f"{night}:{a['start'].isoformat()}") for a in top]
    return record_labels(cfg, requests, "ui").written


def retrain(cfg: DatasetConfig, end: datetime, run_id: str) -> dict[str, Any]:
    """The retrain flow's steps (rolling window up to `end`, labels when on, promote if better)."""
    splits = rolling_splits(cfg, end)
    scoped = with_splits(cfg, splits)
    labels = training_labels(scoped)
    (run,) = train_candidates(scoped, run_id, labels=labels)
    decision = promote_if_better.fn(scoped, splits, run.candidates, None, run.selection, labels)
    return {k: decision.get(k) for k in ("promoted", "reason")} | {
        "evidence": (decision.get("selection") or {}).get("evidence")}


def later_pr_auc(cfg: DatasetConfig, start: datetime, end: datetime) -> float | None:
    """The champion's PR-AUC on the nights still to come (None: no anomaly in them)."""
    later = scored_rows(cfg, start, end)
    ok = later["score"].is_finite().to_numpy()
    y = later["label"].to_numpy()[ok]
    return float(pr_auc(y, later["score"].to_numpy()[ok])) if y.any() else None


def night_starts(cfg: DatasetConfig, count: int) -> tuple[list[datetime], timedelta]:
    """The starts of `count` equal stretches ("nights") of the score split, and their length.

    Equal stretches, not calendar nights, so every series gives the same number of reviews
    and retrainings whatever its clock: about a day each on SMD's 1-minute clock and on NAB's
    ec2_cpu (5 minutes), a few hours on ASD's short test files, ~5 days on NAB's
    machine_temperature (5 minutes) and ~11 days on nyc_taxi (30 minutes).
    """
    assert cfg.splits.score is not None, f"{cfg.name}: the replay needs a score split"
    span = (cfg.splits.score.end - cfg.splits.score.start) / count
    return [cfg.splits.score.start + span * i for i in range(count)], span


def replay(kind: str, name: str, feedback: bool, args: argparse.Namespace, work: Path
           ) -> dict[str, Any]:
    cfg = replay_config(kind, name, work, feedback, args)
    ingest_source.fn(cfg)
    (run,) = train_candidates(cfg, "initial", labels=training_labels(cfg))
    choose_champion.fn(cfg, run.candidates, None, run.selection)
    nights, span = night_starts(cfg, args.nights)
    out = []
    for i, night in enumerate(nights):
        rows = scored_rows(cfg, night, night + span)  # scored before any review
        alerts = alert_segments(rows)
        labelled = review(cfg, alerts, args.review_budget, night.isoformat()) if feedback else 0
        record: dict[str, Any] = {
            "night": night.isoformat(timespec="minutes"), "alerts": len(alerts),
            "true_alerts": sum(a["true"] for a in alerts),
            "precision": (sum(a["true"] for a in alerts) / len(alerts)) if alerts else None,
            "labels": labelled}
        if (i + 1) % args.cadence == 0 and i + 1 < len(nights):
            if feedback:
                record["recalibrated"] = bool(check_feedback.fn(cfg).recalibrated)
            record["retrain"] = retrain(cfg, night + span, f"replay-{i}")
        record["later_pr_auc"] = (later_pr_auc(cfg, night + span, nights[-1] + span)
                                  if i + 1 < len(nights) else None)
        out.append(record)
        print(json.dumps({"feedback": feedback, **record}, default=str), flush=True)
    return {"series": f"{kind}:{name}", "feedback": feedback, "nights": out}


def _mean(values: list[Any]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """Per arm: alert precision over all alerts of the replay, mean later-night PR-AUC."""
    out = {}
    for arm in ("on", "off"):
        nights = run[arm]["nights"]
        alerts = sum(n["alerts"] for n in nights)
        out[arm] = {"alerts": alerts,
                    "precision": sum(n["true_alerts"] for n in nights) / alerts if alerts else None,
                    "later_pr_auc": _mean([n["later_pr_auc"] for n in nights]),
                    "promotions": sum(bool(n.get("retrain", {}).get("promoted")) for n in nights),
                    "labels": sum(n["labels"] for n in nights)}
    return out


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def commands_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The commands whose runs a report holds (a single run's report names one)."""
    if "commands" in report:
        return report["commands"]
    return [{"command": report["command"], "seconds": report["seconds"],
             "series": [run["series"] for run in report["runs"]]}]


def merged(earlier: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """`report`'s runs added to an earlier report: a series run again replaces its old run in
    its row, and each command keeps the series it still reports (so one table covers runs
    that would not fit one command's time)."""
    new = {run["series"]: run for run in report["runs"]}
    commands = [{**c, "series": [s for s in c["series"] if s not in new]}
                for c in commands_of(earlier)]
    known = {run["series"] for run in earlier["runs"]}
    return {"commands": [c for c in commands if c["series"]] + commands_of(report),
            "runs": [new.get(run["series"], run) for run in earlier["runs"]]
            + [run for series, run in new.items() if series not in known]}


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Feedback replay", ""]
    lines += [f"`{c['command']}`; {c['seconds']:.0f} s." for c in commands_of(report)]
    lines += ["", "| series | alerts on / off | alert precision on / off | mean later PR-AUC on / off "
             "| promotions on / off | labels |", "|---|---|---|---|---|---|"]
    for run in report["runs"]:
        on, off = run["summary"]["on"], run["summary"]["off"]
        lines.append(f"| {run['series']} | {on['alerts']} / {off['alerts']} | "
                     f"{_f(on['precision'])} / {_f(off['precision'])} | "
                     f"{_f(on['later_pr_auc'])} / {_f(off['later_pr_auc'])} | "
                     f"{on['promotions']} / {off['promotions']} | {on['labels']} |")
    for run in report["runs"]:
        lines += ["", f"## {run['series']}", "",
                  "| night | alerts (on / off) | precision on / off | labels | "
                  "later PR-AUC on / off | retrain on / off |", "|---|---|---|---|---|---|"]
        for a, b in zip(run["on"]["nights"], run["off"]["nights"], strict=True):
            retrain = " / ".join(("promoted" if r["retrain"]["promoted"] else "kept")
                                 if "retrain" in r else "–" for r in (a, b))
            lines.append(f"| {a['night']} | {a['alerts']} / {b['alerts']} | "
                         f"{_f(a['precision'])} / {_f(b['precision'])} | {a['labels']} | "
                         f"{_f(a['later_pr_auc'])} / {_f(b['later_pr_auc'])} | {retrain} |")
    return "\n".join(lines) + "\n"


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The replay's settings (the defaults are the recorded run's)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", default="smd:machine-2-1",
                        help="comma-separated kind:name (smd, asd or nab)")
    parser.add_argument("--nights", type=int, default=8)
    parser.add_argument("--cadence", type=int, default=2)
    parser.add_argument("--review-budget", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train-windows", type=int, default=5000)
    parser.add_argument("--train-days", type=int, default=10)
    parser.add_argument("--validation-days", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="3 nights, 1 epoch: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--data", type=Path, default=SHARED_DATA,
                        help="the shared public data folder (smd/, asd/, nab/)")
    parser.add_argument("--merge", action="store_true",
                        help="add these series to the report in --out (a series run again "
                             "replaces its row) instead of overwriting it")
    args = parser.parse_args(argv)
    if args.quick:
        args.nights, args.epochs, args.max_train_windows = 3, 1, 500
    return args


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    began = time.perf_counter()
    runs = []
    for spec in args.series.split(","):
        kind, name = spec.split(":", 1)
        if kind not in LOADERS:
            raise SystemExit(f"{spec}: unknown kind {kind!r} (one of {', '.join(LOADERS)})")
        if not (args.data / LOADERS[kind][1]).is_dir():
            raise SystemExit(f"{args.data / LOADERS[kind][1]}: the dev series is not there "
                             "(shared data absent)")
        with tempfile.TemporaryDirectory(prefix="feedback-replay-") as tmp:
            run = {"series": spec, "on": replay(kind, name, True, args, Path(tmp) / "on"),
                   "off": replay(kind, name, False, args, Path(tmp) / "off")}
        runs.append({**run, "summary": summary(run)})
    report = {"command": " ".join(["benchmarks/feedback_replay.py", *(argv or sys.argv[1:])]),
              "seconds": time.perf_counter() - began, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge and (args.out / "feedback_replay.json").is_file():
        report = merged(json.loads((args.out / "feedback_replay.json").read_text()), report)
    (args.out / "feedback_replay.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "feedback_replay.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
