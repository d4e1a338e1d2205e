"""What an operator sees in the Prefect UI after a night: keyed table and markdown artifacts.

Stable keys (`nightly-<ds>`, `nightly-<ds>-segments`) make each artifact a
series in the UI: one entry per night, newest on top.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig

MAX_ROWS = 20


def night_artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def night_markdown(cfg: DatasetConfig, night: dict[str, Any]) -> str:
    """The night at a glance: rows, anomalies, segments, model version, drift verdict."""
    scoring, drift, alerts = night["scoring"], night.get("drift") or {}, night.get("alerts") or {}
    verdict = "**DRIFT**: " + "; ".join(drift["reasons"]) if drift.get("drift") else "no drift"
    lines = [
        f"# nightowl — {cfg.name}, night of {night['date']}",
        "",
        "| | |", "|---|---|",
        f"| status | {scoring['status']} |",
        f"| rows scored | {scoring.get('rows', 0)} |",
        f"| anomalous rows | {scoring.get('anomalies', 0)} |",
        f"| anomaly segments | {alerts.get('segments', 0)} (alerts sent: {alerts.get('sent', 0)}) |",
        f"| model version | {scoring.get('model_version', '—')} |",
        f"| drift | {verdict} |",
        f"| drift event | {drift.get('event') or '—'} |",
    ]
    quarantined = (night.get("ingestion") or {}).get("batches_quarantined")
    if quarantined:
        lines.append(f"| quarantined batches | {quarantined} |")
    return "\n".join(lines)


def segment_rows(alerts: dict[str, Any]) -> list[dict[str, Any]]:
    """Top segments by peak score with their top features (the table artifact)."""
    rows = sorted(alerts.get("records", []), key=lambda r: -r["peak_score"])[:MAX_ROWS]
    return [{"entity": r["entity"], "start": str(r["start"]), "end": str(r["end"]),
             "rows": r["rows"], "peak_score": round(r["peak_score"], 4),
             "top_features": ", ".join(r["top_features"]), "alert": r["status"]} for r in rows]


@task(name="publish-night-artifacts", cache_policy=NO_CACHE)
def publish_night(cfg: DatasetConfig, night: dict[str, Any]) -> list[str]:
    """Markdown summary + table of the top segments, under stable per-dataset keys."""
    summary_key = night_artifact_key("nightly", cfg.name)
    segments_key = night_artifact_key("nightly", cfg.name, "segments")
    create_markdown_artifact(key=summary_key, markdown=night_markdown(cfg, night),
                             description=f"nightowl night {night['date']}")
    create_table_artifact(key=segments_key, table=segment_rows(night.get("alerts") or {}),
                          description=f"top anomaly segments, night {night['date']}")
    return [summary_key, segments_key]
