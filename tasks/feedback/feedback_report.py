"""The per-dataset feedback artifact (`feedback-<ds>` in the Prefect UI): what operators said
this week, how precise the alerts they reviewed were over time (a plot and tables), and the
reviews still waiting for an answer, with links to them.

A label answers an alert when it names an alert segment (the review form's confirm /
dismiss, or `nightowl label --segment`); its alert precision is confirmed / (confirmed +
dismissed). Periods labelled on their own (missed incidents, imports) count as labels, not
as reviewed alerts.

Built for a fleet: the plot draws the pooled precision of all entities per ISO week (with
the reviewed alerts as bars) and only the `PLOT_ENTITIES` entities with the most reviewed
alerts; the table lists the least precise entities first, at most `TABLE_ROWS` rows. The
plot needs matplotlib, which a `nightowl[scoring]` worker lacks: there the artifact says so
and keeps its tables.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, RUN_ID
from prefect.runtime import deployment, flow_run

from schemas.config import DatasetConfig
from tasks import ui
from tasks.common import artifact_key, process_lock, run_logger, store_for
from tasks.feedback.labels import current_labels
from tasks.feedback.open_reviews import (
    OpenReview,
    OpenReviews,
    open_reviews,
    open_reviews_markdown,
    run_url,
)
from tasks.store import Store

PLOT_ENTITIES = 5  # entities drawn beside the pooled line: the most reviewed alerts
TABLE_ROWS = 40  # entity-week rows of the precision table
POOLED_WEEKS = 12  # weeks of the pooled table (the plot shows them all)


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


def pooled_precision(per_entity: pl.DataFrame) -> pl.DataFrame:
    """Per week over every entity: reviewed alerts, confirmed, entities reviewed, precision
    (confirmed / reviewed of the pooled alerts, not a mean of the entities' precisions)."""
    return (per_entity.group_by("week")
            .agg(pl.col("reviewed", "confirmed", "dismissed").sum(), entities=pl.len())
            .with_columns(precision=pl.col("confirmed") / pl.col("reviewed"))
            .sort("week"))


def most_reviewed(per_entity: pl.DataFrame, n: int = PLOT_ENTITIES) -> list[str]:
    """The `n` entities with the most reviewed alerts in all (ties by name)."""
    totals = per_entity.group_by("entity").agg(pl.col("reviewed").sum())
    return totals.sort(["reviewed", "entity"], descending=[True, False])["entity"].head(n).to_list()


def least_precise_first(per_entity: pl.DataFrame) -> pl.DataFrame:
    """The precision table's rows: entities by overall precision (lowest first), then by
    reviewed alerts (most first); each entity's weeks in order."""
    overall = (per_entity.group_by("entity")
               .agg(total=pl.col("reviewed").sum(), hits=pl.col("confirmed").sum())
               .with_columns(overall=pl.col("hits") / pl.col("total")))
    return (per_entity.join(overall, on="entity")
            .sort(["overall", "total", "entity", "week"], descending=[False, True, False, False])
            .drop("total", "hits", "overall"))


# -- the plot ----------------------------------------------------------------------------------


def week_middle(week: str) -> datetime:
    """The Thursday of an ISO week ('2026-W02'): the day that decides which year it is in."""
    return datetime.strptime(f"{week}-4", "%G-W%V-%u")


def precision_figure(pooled: pl.DataFrame, per_entity: pl.DataFrame, shown: list[str],
                     title: str) -> Any:
    """Precision per week: the pooled line (black), one thin line per shown entity, and the
    reviewed alerts of all entities as grey bars on a second axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.add_subplot()
    counts = ax.twinx()
    weeks = [week_middle(w) for w in pooled["week"]]
    counts.bar(weeks, pooled["reviewed"].to_list(), width=5, color="#999999", alpha=0.35,
               label="reviewed alerts (all entities)")
    counts.set_ylabel("reviewed alerts per week", fontsize=8)
    ax.set_zorder(counts.get_zorder() + 1)  # lines over the bars
    ax.patch.set_visible(False)
    for entity in shown:
        part = per_entity.filter(pl.col("entity") == entity).sort("week")
        ax.plot([week_middle(w) for w in part["week"]], part["precision"].to_list(),
                marker="o", ms=3.5, lw=1, alpha=0.85, label=entity)
    ax.plot(weeks, pooled["precision"].to_list(), color="black", lw=2.2, marker="o", ms=5,
            label=f"all {per_entity['entity'].n_unique()} entities, pooled")
    ax.set_ylim(-0.03, 1.05)
    ax.set_ylabel("precision (confirmed / reviewed)", fontsize=8)
    step = -(-len(weeks) // 12)  # at most 12 labelled weeks
    ax.set_xticks(weeks[::step], pooled["week"].to_list()[::step], fontsize=8,
                  rotation=30 if len(weeks) > 6 else 0)
    ax.tick_params(labelsize=8)
    handles = [h for a in (ax, counts) for h in a.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=4, frameon=False)
    ax.set_title(title, fontsize=10, loc="left")
    return fig


def precision_caption(shown: list[str], entities: int) -> str:
    """Which entities the plot draws, and how many it leaves out (still in the pooled line)."""
    left_out = entities - len(shown)
    drawn = ", ".join(ui.md_text(e) for e in shown)
    more = (f"; {left_out} other entit{'y' if left_out == 1 else 'ies'} not drawn (in the "
            "pooled line and the table)" if left_out else "")
    return (f"Black: all {entities} entities' reviewed alerts pooled; grey bars: reviewed alerts "
            f"per week. Drawn alone, the {len(shown)} with the most reviewed alerts: {drawn}"
            f"{more}.")


@dataclass(frozen=True)
class PrecisionPlot:
    """The stored plot as the artifact embeds it, or why there is none."""

    src: str | None
    caption: str


def precision_plot_key(cfg: DatasetConfig, png: bytes) -> str:
    """Content-addressed: an older version of the artifact keeps showing its own plot."""
    return f"reports/{cfg.name}/feedback/precision-{hashlib.sha256(png).hexdigest()[:16]}.png"


def write_precision_plot(cfg: DatasetConfig, store: Store, per_entity: pl.DataFrame
                         ) -> PrecisionPlot | None:
    """Draw, store and link the plot; None without reviewed alerts. Without matplotlib (a
    scoring-only worker) the caption says so and there is no image."""
    if per_entity.is_empty():
        return None
    try:
        import matplotlib  # noqa: F401 - absent on a torch-free scoring-only worker
    except ImportError:
        run_logger(__name__).warning("%s: matplotlib is not installed: no precision plot",
                                     cfg.name)
        return PrecisionPlot(None, "No plot: matplotlib is not installed on the worker that "
                             "published this (a `nightowl[scoring]` install); the tables follow.")
    shown = most_reviewed(per_entity)
    with process_lock("matplotlib"):
        png = ui.figure_png(precision_figure(pooled_precision(per_entity), per_entity, shown,
                                             f"{cfg.name}: alert precision per ISO week"))
    key = precision_plot_key(cfg, png)
    store.write_bytes(key, png)
    return PrecisionPlot(ui.image_src(cfg, store, key),
                         precision_caption(shown, per_entity["entity"].n_unique()))


# -- the artifact ------------------------------------------------------------------------------


def feedback_markdown(cfg: DatasetConfig, labels: pl.DataFrame, now: datetime,
                      plot: PrecisionPlot | None = None,
                      reviews: OpenReviews | None = None) -> str:
    """The artifact's text: this week's labels by verdict and source, the precision plot and
    tables, and (when read) the open reviews."""
    week = labels.filter(pl.col("recorded_at") >= now - timedelta(days=7))
    lines = [f"# Feedback — {cfg.name}", "",
             f"{week.height} label(s) recorded in the 7 days to {now:%Y-%m-%d %H:%M} UTC "
             f"({labels.height} current in all).", "",
             "| verdict | source | labels |", "|---|---|---|"]
    for verdict, source, n in (week.group_by("verdict", "source").len()
                               .sort("verdict", "source").iter_rows()):
        lines.append(f"| {verdict} | {source} | {n} |")
    if reviews is not None:
        lines += ["", *open_reviews_markdown(reviews)]
    per_entity = alert_precision(labels)
    lines += ["", "## Alert precision over time (reviewed alerts: confirmed / reviewed)", ""]
    if per_entity.is_empty():
        return "\n".join([*lines, "No reviewed alerts yet."])
    if plot is not None:
        if plot.src:
            lines += [ui.md_image(f"{cfg.name}: alert precision per week", plot.src), ""]
        lines += [plot.caption, ""]
    lines += _pooled_table(pooled_precision(per_entity)) + [""] + _entity_table(per_entity)
    return "\n".join(lines)


def _pooled_table(pooled: pl.DataFrame) -> list[str]:
    recent = pooled.tail(POOLED_WEEKS)
    lines = [f"All entities pooled, the last {recent.height} week(s) with reviews:", "",
             "| week | entities | reviewed | confirmed | dismissed | precision |",
             "|---|---|---|---|---|---|"]
    return lines + [f"| {r['week']} | {r['entities']} | {r['reviewed']} | {r['confirmed']} | "
                    f"{r['dismissed']} | {r['precision']:.2f} |"
                    for r in recent.iter_rows(named=True)]


def _entity_table(per_entity: pl.DataFrame) -> list[str]:
    ranked = least_precise_first(per_entity)
    lines = ["Per entity, the least precise first (then the most reviewed):", "",
             "| entity | week | reviewed | confirmed | dismissed | precision |",
             "|---|---|---|---|---|---|"]
    for r in ranked.head(TABLE_ROWS).iter_rows(named=True):
        lines.append(f"| {ui.md_text(r['entity'])} | {r['week']} | {r['reviewed']} | "
                     f"{r['confirmed']} | {r['dismissed']} | {r['precision']:.2f} |")
    if ranked.height > TABLE_ROWS:
        left = ranked.tail(ranked.height - TABLE_ROWS)["entity"].n_unique()
        lines += ["", f"{ranked.height - TABLE_ROWS} more row(s) left out ({left} "
                  f"entit{'y' if left == 1 else 'ies'} with higher precision or fewer reviews): "
                  "the labels table has them all."]
    return lines


def publish_feedback(cfg: DatasetConfig, reviews: OpenReviews | None = None) -> str:
    """Publish (replace) the dataset's feedback artifact; returns its markdown."""
    store = store_for(cfg)
    labels = current_labels(cfg)
    plot = write_precision_plot(cfg, store, alert_precision(labels))
    markdown = feedback_markdown(cfg, labels, datetime.now(UTC), plot, reviews)
    if plot is not None and plot.src and not ui.inline_images(cfg):
        markdown += "\n\n" + ui.url_note(cfg, store, links=False)
    create_markdown_artifact(key=artifact_key("feedback", cfg.name), markdown=markdown,
                             description=f"operators' labels, alert precision and open "
                             f"reviews, {cfg.name}")
    return markdown


@task(name="publish-feedback-before-review", cache_policy=INPUTS + RUN_ID, persist_result=True,
      result_serializer="json")
def announce_review(cfg: DatasetConfig, config: str | None, night: date,
                    timeout_hours: float) -> str:
    """Publish the feedback artifact with this review among the open ones, once per run: it
    runs just before suspending (still Running, so the API does not list it yet), and a
    resumed run, which starts again from the top, must not announce itself again. Returns
    the artifact's key."""
    now = datetime.now(UTC)
    this = OpenReview(run_id=str(flow_run.id), name=str(flow_run.name), night=night,
                      since=now, expires=now + timedelta(hours=timeout_hours),
                      url=run_url(str(flow_run.id)))
    publish_feedback(cfg, open_reviews(config, deployment.id).with_waiting(this))
    return artifact_key("feedback", cfg.name)
