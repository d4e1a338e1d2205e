"""The per-dataset feedback artifact (`feedback-<ds>` in the Prefect UI): what operators said
this week, and how precise the alerts they reviewed were, per entity and week.

A label answers an alert when it names an alert segment (the review form's confirm /
dismiss, or `nightowl label --segment`); its alert precision is confirmed / (confirmed +
dismissed). Periods labelled on their own (missed incidents, imports) count as labels, not
as reviewed alerts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
from prefect.artifacts import create_markdown_artifact

from schemas.config import DatasetConfig
from tasks import ui
from tasks.common import artifact_key
from tasks.feedback.labels import current_labels


def answers_alert(labels: pl.DataFrame) -> pl.Series:
    """Labels that name a segment other than their period's own id (`entity@start/end`,
    what tasks.feedback.labels gives a label without one): answers to an alert."""
    own = [f"{e}@{_utc(s).isoformat()}/{_utc(t).isoformat()}"
           for e, s, t in labels.select("entity", "start", "end").iter_rows()]
    return labels["segment"] != pl.Series(own, dtype=pl.String)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def alert_precision(labels: pl.DataFrame) -> pl.DataFrame:
    """Per entity and ISO week of the alert: reviewed alerts, confirmed, dismissed, precision."""
    reviewed = labels.filter(answers_alert(labels) & pl.col("verdict").is_in(["anomaly", "normal"]))
    return (reviewed.with_columns(week=pl.col("start").dt.strftime("%G-W%V"))
            .group_by("entity", "week")
            .agg(reviewed=pl.len(), confirmed=(pl.col("verdict") == "anomaly").sum(),
                 dismissed=(pl.col("verdict") == "normal").sum())
            .with_columns(precision=pl.col("confirmed") / pl.col("reviewed"))
            .sort("entity", "week"))


def feedback_markdown(cfg: DatasetConfig, labels: pl.DataFrame, now: datetime) -> str:
    """The artifact's text: this week's labels by verdict and source, the precision table."""
    week = labels.filter(pl.col("recorded_at") >= now - timedelta(days=7))
    lines = [f"# Feedback — {cfg.name}", "",
             f"{week.height} label(s) recorded in the 7 days to {now:%Y-%m-%d %H:%M} UTC "
             f"({labels.height} current in all).", "",
             "| verdict | source | labels |", "|---|---|---|"]
    for verdict, source, n in (week.group_by("verdict", "source").len()
                               .sort("verdict", "source").iter_rows()):
        lines.append(f"| {verdict} | {source} | {n} |")
    lines += ["", "## Alert precision per entity (reviewed alerts: confirmed / reviewed)", "",
              "| entity | week | reviewed | confirmed | dismissed | precision |",
              "|---|---|---|---|---|---|"]
    for r in alert_precision(labels).iter_rows(named=True):
        lines.append(f"| {ui.md_text(r['entity'])} | {r['week']} | {r['reviewed']} | "
                     f"{r['confirmed']} | {r['dismissed']} | {r['precision']:.2f} |")
    return "\n".join(lines)


def publish_feedback(cfg: DatasetConfig) -> str:
    """Publish (replace) the dataset's feedback artifact; returns its markdown."""
    markdown = feedback_markdown(cfg, current_labels(cfg), datetime.now(UTC))
    create_markdown_artifact(key=artifact_key("feedback", cfg.name), markdown=markdown,
                             description=f"operators' labels and alert precision, {cfg.name}")
    return markdown
