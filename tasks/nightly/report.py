"""What an operator sees in the Prefect UI after a night: keyed table and markdown artifacts.

Stable keys (`nightly-<ds>`, `nightly-<ds>-segments`) make each artifact a
series in the UI: one entry per night, newest on top.
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
from tasks.nightly.alert import AlertSummary
from tasks.nightly.drift import DriftVerdict
from tasks.nightly.score import ScoredNight


@dataclass(frozen=True)
class NightResult:
    """Everything one night did, stage by stage (None: the stage did not run)."""

    dataset: str
    date: str
    ingestion: IngestReport
    scoring: ScoredNight
    drift: DriftVerdict | None = None
    alerts: AlertSummary | None = None
    artifacts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The flow's return value: small and JSON-able (per-feature statistics stay stored)."""
        return {"dataset": self.dataset, "date": self.date, "ingestion": self.ingestion.to_json(),
                "scoring": self.scoring.to_json(),
                "drift": self.drift.to_json() if self.drift else None,
                "alerts": self.alerts.to_json() if self.alerts else None,
                "artifacts": self.artifacts}


def night_markdown(night: NightResult) -> str:
    """The night at a glance: rows, anomalies, segments, model version, drift verdict."""
    scoring, drift, alerts = night.scoring, night.drift, night.alerts
    verdict = "**DRIFT**: " + "; ".join(drift.reasons) if drift and drift.drift else "no drift"
    lines = [
        f"# nightowl — {night.dataset}, night of {night.date}",
        "",
        "| | |", "|---|---|",
        f"| status | {scoring.status} |",
        f"| rows scored | {scoring.rows} |",
        f"| anomalous rows | {scoring.anomalies} |",
        (f"| anomaly segments | {alerts.segments if alerts else 0} "
         f"(alerts sent: {alerts.sent if alerts else 0}) |"),
        f"| model version | {scoring.model_version or '—'} |",
        f"| scored with | {scoring.backend or '—'}{f' ({scoring.note})' if scoring.note else ''} |",
        f"| drift | {verdict} |",
        f"| drift event | {(drift.event if drift else None) or '—'} |",
    ]
    quarantined = len(night.ingestion.quarantined)
    if quarantined:
        lines.append(f"| quarantined batches | {quarantined} |")
    return "\n".join(lines)


@task(name="publish-night-artifacts", cache_policy=NO_CACHE)
def publish_night(cfg: DatasetConfig, night: NightResult) -> list[str]:
    """Markdown summary + table of the top segments, under stable per-dataset keys."""
    summary_key = artifact_key("nightly", cfg.name)
    segments_key = artifact_key("nightly", cfg.name, "segments")
    create_markdown_artifact(key=summary_key, markdown=night_markdown(night),
                             description=f"nightowl night {night.date}")
    create_table_artifact(key=segments_key, table=night.alerts.top if night.alerts else [],
                          description=f"top anomaly segments, night {night.date}")
    return [summary_key, segments_key]
