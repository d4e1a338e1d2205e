"""Regenerate schemas/selection_priors.json: the champion prior per kind of data.

Why: a new dataset has no history to learn a prior from; nightowl's own dev benchmark
has, but only its VALIDATION columns may feed a choice. Per kind of data (SMD/ASD server
machines: multivariate; NAB: univariate; ODDS: table), each candidate's mean validation
PR-AUC over the kind's series, ranked; the provenance says which results file, at which
commit, which series and which rule.

As a check (printed and written to benchmarks/results/selection_priors.md, never read by
any choice): leave one series out, derive the prior from the kind's other series, and
compare that prior's score-split PR-AUC with the best fixed candidate and the champion the
benchmark chose. A kind with one series has no such check.

    .venv/bin/python benchmarks/selection_priors.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "dev_benchmark.json"
OUT = REPO / "schemas" / "selection_priors.json"
CHECK = REPO / "benchmarks" / "results" / "selection_priors.md"
KIND_OF = {"smd": "multivariate", "asd": "multivariate", "nab": "univariate", "odds": "table"}
RULE = ("per kind, every candidate (family or ensemble) ranked by its mean validation PR-AUC "
        "over the kind's series (first validation half of each test file)")


def candidate_rows(series: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The candidates of one series (families and the ensemble; no champion, no baselines)."""
    return {r["family"]: r for r in series["rows"] if r["role"] == "family"}


def ranking(series: list[dict[str, Any]]) -> tuple[list[str], dict[str, float]]:
    """Candidates present in every series, by mean validation PR-AUC (highest first)."""
    names = set.intersection(*(set(candidate_rows(s)) for s in series))
    means = {n: float(np.mean([candidate_rows(s)[n]["val_pr_auc"] for s in series]))
             for n in names}
    return sorted(means, key=lambda n: (-means[n], n)), means


def commit_of(path: Path) -> str:
    """The last commit that changed the results file (what the numbers belong to)."""
    out = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%H", "--",
                          str(path.relative_to(REPO))], capture_output=True, text=True, check=True)
    return out.stdout.strip() or "uncommitted"


def priors(results: dict[str, Any], source: Path) -> dict[str, Any]:
    """The JSON shipped in schemas/: rankings per kind and their provenance."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for s in results["series"]:
        by_kind.setdefault(KIND_OF[s["kind"]], []).append(s)
    kinds = {}
    for kind, series in sorted(by_kind.items()):
        order, means = ranking(series)
        kinds[kind] = {"ranking": order, "val_pr_auc": {n: round(means[n], 4) for n in order},
                       "series": [f"{s['kind']}:{s['series']}" for s in series]}
    return {"provenance": {"results": str(source.relative_to(REPO)), "commit": commit_of(source),
                           "settings": results["settings"], "rule": RULE,
                           "generated_by": "benchmarks/selection_priors.py"},
            "kinds": kinds}


def leave_one_out(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per series: the prior from the kind's OTHER series and, for the check only, the
    score-split PR-AUC of that prior, of the benchmark's champion and the best candidate."""
    rows = []
    for s in results["series"]:
        others = [o for o in results["series"]
                  if KIND_OF[o["kind"]] == KIND_OF[s["kind"]] and o is not s]
        if not others:
            continue
        prior = ranking(others)[0][0]
        mine = candidate_rows(s)
        champion = next(r for r in s["rows"] if r["role"] == "champion")
        best = max(mine.values(), key=lambda r: r["pr_auc"])
        rows.append({"kind": KIND_OF[s["kind"]], "series": s["series"], "prior": prior,
                     "prior_pr_auc": mine[prior]["pr_auc"], "champion": champion["picked"],
                     "champion_pr_auc": champion["pr_auc"], "best": best["family"],
                     "best_pr_auc": best["pr_auc"]})
    return rows


def check_table(rows: list[dict[str, Any]]) -> str:
    lines = ["# Shipped selection priors: leave-one-series-out check", "",
             "Prior from the kind's other series (validation only); score-split PR-AUC of "
             "that prior, of the validation-metric champion, and the best candidate in "
             "hindsight.", "",
             "| kind | series | prior | prior PR-AUC | champion | champion PR-AUC | best | best PR-AUC |",
             "|---|---|---|---:|---|---:|---|---:|"]
    lines += [f"| {r['kind']} | {r['series']} | {r['prior']} | {r['prior_pr_auc']:.3f} | "
              f"{r['champion']} | {r['champion_pr_auc']:.3f} | {r['best']} | {r['best_pr_auc']:.3f} |"
              for r in rows]
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        lines.append(f"\n{kind}: mean prior {np.mean([r['prior_pr_auc'] for r in mine]):.3f}, "
                     f"champion {np.mean([r['champion_pr_auc'] for r in mine]):.3f}, best in "
                     f"hindsight {np.mean([r['best_pr_auc'] for r in mine]):.3f} "
                     f"({len(mine)} series)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    args.out.write_text(json.dumps(priors(results, args.results.resolve()), indent=1) + "\n")
    text = check_table(leave_one_out(results))
    CHECK.write_text(text)
    print(f"wrote {args.out}\n{text}")


if __name__ == "__main__":
    sys.exit(main())
