"""What an operator sees in the Prefect UI after a night: keyed table and markdown artifacts.

Stable keys (`nightly-<ds>`, `nightly-<ds>-segments`) make each artifact a
series in the UI: one entry per night, newest on top. A fleet's night is one
summary (totals, drifted scopes, entities without a model) and one table of its
top segments across every model, ranked by peak score over that model's threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import artifact_key
from tasks.data.ingest import IngestReport
from tasks.nightly.alert import TOP_SEGMENTS, AlertSummary
from tasks.nightly.drift import DriftVerdict
from tasks.nightly.score import NightPlan, ScoredNight

MAX_LISTED = 20


@dataclass(frozen=True)
class ScopeNight:
    """One model scope's night: its scores, drift verdict and alerts."""

    scoring: ScoredNight
    drift: DriftVerdict | None = None
    alerts: AlertSummary | None = None

    def to_json(self) -> dict[str, Any]:
        return {"scoring": self.scoring.to_json(),
                "drift": self.drift.to_json() if self.drift else None,
                "alerts": self.alerts.to_json() if self.alerts else None}


@dataclass(frozen=True)
class NightResult:
    """Everything one night did: the plan, then each scope's scores, drift and alerts."""

    dataset: str
    date: str
    ingestion: IngestReport
    plan: NightPlan
    scopes: list[ScopeNight] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "scored" if self.scopes else "missing"

    @property
    def rows(self) -> int:
        return sum(s.scoring.rows for s in self.scopes)

    @property
    def anomalies(self) -> int:
        return sum(s.scoring.anomalies for s in self.scopes)

    @property
    def drifted(self) -> list[DriftVerdict]:
        return [s.drift for s in self.scopes if s.drift and s.drift.drift]

    def scoring_json(self) -> dict[str, Any]:
        """The night's scoring in one small dict (the backfill's per-night line)."""
        versions = sorted({s.scoring.model_version for s in self.scopes if s.scoring.model_version})
        return {"date": self.date, "status": self.status, "rows": self.rows,
                "anomalies": self.anomalies, "keys": [k for s in self.scopes for k in s.scoring.keys],
                "model_version": versions[0] if len(versions) == 1 else None,
                "models": len(versions), "not_modelled": len(self.plan.not_modelled),
                "model_seconds": round(sum(s.scoring.model_seconds for s in self.scopes), 3)}

    def to_json(self) -> dict[str, Any]:
        """The flow's return value: small and JSON-able (per-feature statistics stay stored)."""
        return {"dataset": self.dataset, "date": self.date, "ingestion": self.ingestion.to_json(),
                "plan": self.plan.to_json(), "scoring": self.scoring_json(),
                "scopes": [s.to_json() for s in self.scopes], "artifacts": self.artifacts}


def _listed(names: list[str]) -> str:
    more = f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def night_markdown(night: NightResult) -> str:
    """The night at a glance: rows, anomalies, segments, model versions, drift, gaps."""
    scoring = night.scoring_json()
    alerts = [s.alerts for s in night.scopes if s.alerts]
    drifted = night.drifted
    if not drifted:
        verdict = "no drift"
    elif len(night.scopes) == 1:
        verdict = "**DRIFT**: " + "; ".join(drifted[0].reasons)
    else:
        verdict = f"**DRIFT** in {len(drifted)} of {len(night.scopes)} models: " + _listed(
            [d.group or "dataset model" for d in drifted])
    events = [d.event for d in drifted if d.event]
    versions = scoring["model_version"] or f"{scoring['models']} models"
    lines = [
        f"# nightowl — {night.dataset}, night of {night.date}",
        "",
        "| | |", "|---|---|",
        f"| status | {night.status} |",
        f"| rows scored | {night.rows} |",
        f"| anomalous rows | {night.anomalies} |",
        (f"| anomaly segments | {sum(a.segments for a in alerts)} "
         f"(alerts sent: {sum(a.sent for a in alerts)}) |"),
        f"| model version | {versions if night.scopes else '—'} |",
        f"| drift | {verdict} |",
        f"| drift event | {', '.join(events) or '—'} |",
    ]
    if night.plan.fallback:
        lines.append(f"| scored by the dataset-level model (no model of their own) | "
                     f"{_listed(night.plan.fallback)} |")
    if night.plan.not_modelled:
        lines.append(f"| **not scored: no model** | {_listed(night.plan.not_modelled)} |")
    quarantined = len(night.ingestion.quarantined)
    if quarantined:
        lines.append(f"| quarantined batches | {quarantined} |")
    return "\n".join(lines)


def top_segments(night: NightResult) -> list[dict[str, Any]]:
    rows = [r for s in night.scopes if s.alerts for r in s.alerts.top]
    return sorted(rows, key=lambda r: -r["x_threshold"])[:TOP_SEGMENTS]


@task(name="publish-night-artifacts", cache_policy=NO_CACHE)
def publish_night(cfg: DatasetConfig, night: NightResult) -> list[str]:
    """Markdown summary + table of the top segments, under stable per-dataset keys."""
    summary_key = artifact_key("nightly", cfg.name)
    segments_key = artifact_key("nightly", cfg.name, "segments")
    create_markdown_artifact(key=summary_key, markdown=night_markdown(night),
                             description=f"nightowl night {night.date}")
    create_table_artifact(key=segments_key, table=top_segments(night),
                          description=f"top anomaly segments, night {night.date}")
    return [summary_key, segments_key]
