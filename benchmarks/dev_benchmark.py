"""Issue 10's dev benchmark: every dev series, every family, the champion and the baselines.

Why: the issue's targets are per data-set family means on the dev series (SMD machine-2-1,
ASD omi-1..6, three NAB series, ODDS cardio): the champion's score-split PR-AUC and VUS-PR
against every family, every baseline, PyOD's validation pick and the baselines' rank-mean,
plus the selection regret (best family in hindsight minus the champion, score split). This
script runs each series through the real runner (`flows.benchmark.benchmark_series`, the
flow behind `nightowl benchmark ... --baselines`: ingestion with GX, scaling, the shared
engine, calibration, registered versions) and aggregates; it computes nothing of its own
but the means and the regret.

Budget: designed for < 30 min on 2 otherwise idle CPU cores (`--threads 2`); the per-series
wall times it writes are the check. `--quick` is a smoke run (1 epoch, 500 windows, a
1-epoch chapter LSTM-AE).

    .venv/bin/python benchmarks/dev_benchmark.py                      # all dev series
    .venv/bin/python benchmarks/dev_benchmark.py --series smd:machine-2-1,odds:cardio
    .venv/bin/python benchmarks/dev_benchmark.py --quick --series odds:cardio

Writes benchmarks/results/dev_benchmark.json and dev_benchmark.md (`--out` to change).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _key, _value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("GX_ANALYTICS_ENABLED", "false"),
                     ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")):
    os.environ.setdefault(_key, _value)  # as `nightowl benchmark` does (flows/cli.py)

from benchmarks.common import SHARED_DATA  # noqa: E402
from benchmarks.dev_series import DEV_SERIES, NAB_WINDOW  # noqa: E402
from flows.benchmark import CHAMPION, BenchmarkOptions, benchmark_series  # noqa: E402
from models.registry import FAMILIES  # noqa: E402

log = logging.getLogger("dev_benchmark")

RESULTS = Path(__file__).resolve().parent / "results"
ROOTS = {"smd": ("smd", SHARED_DATA / "smd"), "asd": ("smd", SHARED_DATA / "asd"),
         "nab": ("nab", SHARED_DATA / "nab"), "odds": ("odds", SHARED_DATA / "tabular")}
GROUPS = {"smd": "SMD+ASD", "asd": "SMD+ASD", "nab": "NAB", "odds": "ODDS"}
FULL = {"epochs": 5, "max_train_windows": 5000, "chapter_epochs": 20}
"""The full run's budget (chosen so all 11 series fit 30 min on 2 cores; see RESULTS.md)."""
QUICK = {"epochs": 1, "max_train_windows": 500, "chapter_epochs": 1}
METRICS = ("val_pr_auc", "pr_auc", "vus_pr", "roc_auc", "fpr")


def selected(spec: str) -> list[tuple[str, str]]:
    """`kind:name` pairs (name may be the last path part, e.g. nab:nyc_taxi); empty: all."""
    if not spec:
        return list(DEV_SERIES)
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        kind, _, name = item.partition(":")
        match = [(k, n) for k, n in DEV_SERIES if k == kind and name in (n, n.split("/")[-1])]
        if not match:
            known = ", ".join(f"{k}:{n.split('/')[-1]}" for k, n in DEV_SERIES)
            raise SystemExit(f"unknown dev series {item!r}; known: {known}")
        out += match
    return out


def run_series(kind: str, name: str, work_dir: Path, budget: dict[str, int],
               families: tuple[str, ...], threads: int, baselines: bool = True,
               combiner: str | None = None) -> dict[str, Any]:
    """One series through the runner with baselines; its rows and its wall time."""
    runner_kind, root = ROOTS[kind]
    options = BenchmarkOptions(
        families=families, epochs=budget["epochs"], max_train_windows=budget["max_train_windows"],
        window=NAB_WINDOW if kind == "nab" else None, threads=threads, baselines=baselines,
        chapter_epochs=budget["chapter_epochs"], combiner=combiner)
    started = time.perf_counter()
    rows = benchmark_series(runner_kind, root, name, work_dir / kind, options)
    wall = time.perf_counter() - started
    clean = [{k: _plain(v) for k, v in r.items()} for r in rows]
    log.info("%s %s: %d rows in %.0f s", kind, name, len(rows), wall)
    return {"kind": kind, "group": GROUPS[kind], "series": name, "wall_s": wall, "rows": clean}


def _plain(value: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def regret(series: dict[str, Any]) -> dict[str, Any]:
    """Best family in hindsight minus the champion, score-split PR-AUC (0 = the best was picked)."""
    fams = [r for r in series["rows"] if r.get("role") == "family" and r.get("pr_auc") is not None]
    champ = next((r for r in series["rows"] if r.get("role") == CHAMPION), None)
    if not fams or champ is None or champ.get("pr_auc") is None:
        return {"regret": None, "best_family": None, "champion": None}
    best = max(fams, key=lambda r: r["pr_auc"])
    return {"regret": best["pr_auc"] - champ["pr_auc"], "best_family": best["family"],
            "champion": champ.get("picked")}


def group_means(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per data-set family: each detector's mean of each metric over the group's series."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for group in dict.fromkeys(r["group"] for r in results):
        members = [r for r in results if r["group"] == group]
        detectors = dict.fromkeys(row["family"] for r in members for row in r["rows"])
        out[group] = {}
        for det in detectors:
            rows = [row for r in members for row in r["rows"] if row["family"] == det]
            out[group][det] = {"n": len(rows), "role": rows[0].get("role"), **{
                m: _mean([row.get(m) for row in rows]) for m in METRICS}}
        regrets = [regret(r)["regret"] for r in members]
        out[group]["_regret"] = {"n": len(regrets), "mean": _mean(regrets)}
    return out


def best_fixed(detectors: dict[str, dict[str, Any]]) -> str | None:
    """The candidate (a family or the ensemble) with the best mean score-split PR-AUC over a
    group: what using one candidate for every series would have scored (hindsight, for the
    table only)."""
    fams = {d: m for d, m in detectors.items()
            if m.get("role") == "family" and m.get("pr_auc") is not None}
    return max(fams, key=lambda d: fams[d]["pr_auc"]) if fams else None


def _mean(values: list[Any]) -> float | None:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(ok)) if ok else None


def markdown(report: dict[str, Any]) -> str:
    """Group means (champion first, then families, then baselines), regret and wall times."""
    lines = [f"Settings: {json.dumps(report['settings'])}", ""]
    for group, dets in report["groups"].items():
        lines += [f"### {group} (mean over {dets['_regret']['n']} series; score split)", "",
                  "| detector | val PR-AUC | PR-AUC | VUS-PR | ROC-AUC | FPR@thr |",
                  "|---|---:|---:|---:|---:|---:|"]
        for det, m in dets.items():
            if det.startswith("_"):
                continue
            cells = [_fmt(m[k]) for k in METRICS]
            lines.append(f"| {det} | " + " | ".join(cells) + " |")
        champ = dets.get(CHAMPION, {})
        lines.append("")
        for metric in ("pr_auc", "vus_pr"):
            gaps = {d: champ[metric] - m[metric] for d, m in dets.items()
                    if m.get("role") in ("baseline", "selection") and champ.get(metric) is not None
                    and m.get(metric) is not None}
            if gaps:
                worst = min(gaps, key=gaps.get)
                lines.append(f"Champion minus the strongest baseline ({worst}), {metric}: "
                             f"{gaps[worst]:+.3f}.")
        fixed = best_fixed(dets)
        if fixed and champ.get("pr_auc") is not None:
            lines.append(f"Best fixed candidate ({fixed}, the same for every series): "
                         f"{_fmt(dets[fixed]['pr_auc'])} PR-AUC; champion minus it: "
                         f"{champ['pr_auc'] - dets[fixed]['pr_auc']:+.3f}.")
        lines += [f"Mean selection regret: {_fmt(dets['_regret']['mean'])}.",
                  export_line(report["series"], group), ""]
    lines += ["### Per series", "", "Evidence: labelled validation events, the prior (and "
              "where it came from), the challenger's margin (validation gain) and the share of "
              "bootstraps it beat the prior in. Drift: the nightly drift check over the score "
              "split; alerts: score rows over the calibrated threshold (normal ones in brackets).",
              "", "| series | champion | events | prior (source) | challenger | margin | "
              "confidence | best family (hindsight) | regret | champion PR-AUC | drift | alerts "
              "(normal) | wall s |", "|---|---|---:|---|---|---:|---:|---|---:|---:|---|---:|---:|"]
    for s in report["series"]:
        champ = next((r for r in s["rows"] if r.get("role") == CHAMPION), {})
        reg = s["regret"]
        source = (champ.get("prior_source") or "").replace("shipped:", "")
        lines.append(f"| {s['kind']}:{s['series'].split('/')[-1]} | {reg['champion']} | "
                     f"{champ.get('events', 'n/a')} | {champ.get('prior', 'n/a')} ({source}) | "
                     f"{champ.get('challenger') or '–'} | {_fmt(champ.get('margin'))} | "
                     f"{_fmt(champ.get('confidence'))} | {reg['best_family']} | "
                     f"{_fmt(reg['regret'])} | {_fmt(champ.get('pr_auc'))} | "
                     f"{champ.get('drift', 'n/a')} | {champ.get('alerts', 'n/a')} "
                     f"({champ.get('false_alerts', 'n/a')}) | {s['wall_s']:.0f} |")
    total = sum(s["wall_s"] for s in report["series"])
    lines += ["", export_line(report["series"]),
              f"Total wall: {total:.0f} s ({total / 60:.1f} min) for {len(report['series'])} series."]
    return "\n".join(lines)


def export_line(series: list[dict[str, Any]], group: str | None = None) -> str:
    """How many family versions shipped a verified model.onnx (issue 20's target: >= 99.5%),
    and which were refused."""
    rows = [(s, r) for s in series if group is None or s["group"] == group for r in s["rows"]
            if r.get("role") == "family" and r.get("exported") is not None]
    if not rows:
        return "ONNX export: not recorded."
    refused = [f"{s['kind']}:{s['series'].split('/')[-1]} {r['family']}" for s, r in rows
               if not r["exported"]]
    done = len(rows) - len(refused)
    return (f"ONNX export: {done} of {len(rows)} family versions ({100 * done / len(rows):.1f}%)"
            + (f"; refused: {', '.join(refused)}." if refused else "."))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", default="", help="kind:name,... (default: all dev series)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets")
    parser.add_argument("--families", default="", help="comma-separated (default: all registered)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-train-windows", type=int, default=None)
    parser.add_argument("--chapter-epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores: 2)")
    parser.add_argument("--no-baselines", action="store_true", help="families and champion only")
    parser.add_argument("--combiner", default=None, choices=("robust_z", "cauchy"),
                        help="the ensemble's combiner (default: the config's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: results/dev_benchmark[-quick].json); .md beside it")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()  # Prefect configures the root logger: ours get their own
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    for name in ("dev_benchmark", "tasks.benchmark.baselines"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = False
    budget = dict(QUICK if args.quick else FULL)
    for key in budget:
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip()) or tuple(sorted(FAMILIES))
    out = args.out or RESULTS / f"dev_benchmark{'-quick' if args.quick else ''}.json"
    results = []
    with tempfile.TemporaryDirectory(prefix="dev-benchmark-") as tmp:
        for kind, name in selected(args.series):
            result = run_series(kind, name, Path(tmp), budget, families, args.threads,
                                not args.no_baselines, args.combiner)
            result["regret"] = regret(result)
            results.append(result)
    report = {"settings": {**budget, "families": list(families), "threads": args.threads,
                           "combiner": args.combiner, "baselines": not args.no_baselines},
              "series": results, "groups": group_means(results),
              "total_wall_s": sum(r["wall_s"] for r in results)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    text = markdown(report)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
