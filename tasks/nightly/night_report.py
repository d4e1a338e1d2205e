"""What an operator sees in the Prefect UI after a night, and how far a backfill has come.

Stable keys make each artifact a series in the UI, one entry per night, newest on top:
`nightly-<ds>` (the summary: totals, drifted scopes, entities without a model, the night's
plot of the top segments' score traces and their features' contributions, links to the
data), `nightly-<ds>-segments` (the top segments across every model, ranked by peak score
over that model's threshold), `nightly-<ds>-scores` (a link to the night's scores
partition) and `backfill-<ds>` (a progress bar: nights done / total).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks import ui
from tasks.common import artifact_key, process_lock, run_logger, store_for
from tasks.data.ingest import IngestReport
from tasks.data.ingest_report import link_text, validation_key
from tasks.nightly.alert import TOP_SEGMENTS, AlertSummary
from tasks.nightly.drift import DriftVerdict
from tasks.nightly.score import NightPlan, ScoredNight, scores_prefix
from tasks.scoring import CONTRIB_PREFIX
from tasks.store import Store

MAX_LISTED = 20
PLOT_SEGMENTS = 4  # segments drawn in the night's plot (the table lists up to 20)
PLOT_FEATURES = 6  # features per segment in its contribution bars
PLOT_ENTITIES = 12  # a night without segments plots the scores of at most this many entities
SEGMENTS_PLOT = "segments.png"


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
                "model_seconds": round(sum(s.scoring.model_seconds for s in self.scopes), 3),
                "backends": sorted({s.scoring.backend for s in self.scopes if s.scoring.backend}),
                "notes": [s.scoring.note for s in self.scopes if s.scoring.note]}

    def to_json(self) -> dict[str, Any]:
        """The flow's return value: small and JSON-able (per-feature statistics stay stored)."""
        return {"dataset": self.dataset, "date": self.date, "ingestion": self.ingestion.to_json(),
                "plan": self.plan.to_json(), "scoring": self.scoring_json(),
                "scopes": [s.to_json() for s in self.scopes], "artifacts": self.artifacts}


# -- the night's plot (pure: frames in, PNG bytes out) ------------------------------------------


def _segment_rows(scores: pl.DataFrame, seg: dict[str, Any], pad: int) -> tuple[pl.DataFrame,
                                                                                  pl.DataFrame]:
    """(the segment's rows of its entity, the same with `pad` rows of context either side)."""
    rows = scores.filter(pl.col("entity") == seg["entity"]).sort("timestamp").with_row_index()
    start, end = (datetime.fromisoformat(str(seg[k])) for k in ("start", "end"))
    inside = rows.filter(pl.col("timestamp").is_between(start, end))
    if inside.is_empty():
        return inside, inside
    first, last = int(inside["index"][0]), int(inside["index"][-1])
    return inside, rows.slice(max(first - pad, 0), last - first + 1 + 2 * pad)


def _top_contributions(inside: pl.DataFrame, n: int) -> list[tuple[str, float]]:
    """The segment's mean contribution per row of its `n` largest features."""
    columns = [c for c in inside.columns if c.startswith(CONTRIB_PREFIX)]
    means = inside.select(pl.col(columns).mean()).row(0) if inside.height else ()
    ranked = sorted(zip(columns, means), key=lambda cv: -(cv[1] or 0.0))[:n]
    return [(c[len(CONTRIB_PREFIX):], float(v or 0.0)) for c, v in ranked]


def night_png(scores: pl.DataFrame, top: list[dict[str, Any]], title: str) -> bytes:
    """The night at a glance: each top segment's score trace (segment shaded, threshold
    dashed) beside its features' contributions; without segments, every entity's scores."""
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    segments = top[:PLOT_SEGMENTS]
    if not segments:
        fig = Figure(figsize=(11, 3.2))
        ax = fig.add_subplot()
        for (entity,), part in scores.sort("timestamp").group_by("entity", maintain_order=True):
            ax.plot(part["timestamp"].to_numpy(), part["score"].to_numpy(), lw=0.7, label=entity)
        if scores.height:
            ax.axhline(float(scores["threshold"][0]), color="#d62728", ls="--", lw=1,
                       label="threshold")
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M"))
        ax.set(title=f"{title}: no anomaly segments", xlabel="time", ylabel="score")
        if scores["entity"].n_unique() <= 12:
            ax.legend(fontsize=7, ncols=4, loc="upper left")
        fig.tight_layout()
        return ui.figure_png(fig)
    fig = Figure(figsize=(12, 0.6 + 2.3 * len(segments)))
    grid = fig.add_gridspec(len(segments), 2, width_ratios=[2.3, 1])
    for i, seg in enumerate(segments):
        inside, context = _segment_rows(scores, seg, pad=max(int(seg["rows"]), 12))
        ax, bars = fig.add_subplot(grid[i, 0]), fig.add_subplot(grid[i, 1])
        ts, values = context["timestamp"].to_numpy(), context["score"].to_numpy()
        ax.plot(ts, values, lw=0.9, color="#1f4e79")
        if inside.height:
            ax.axvspan(inside["timestamp"][0], inside["timestamp"][-1], color="#d62728",
                       alpha=0.18, lw=0)
            ax.axhline(float(inside["threshold"][0]), color="#d62728", ls="--", lw=1)
        if values.size and (values > 0).all():
            ax.set_yscale("log")
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M"))
        start, end = (datetime.fromisoformat(str(seg[k])) for k in ("start", "end"))
        ax.set_title(f"{seg['entity']}: {start:%H:%M} to {end:%H:%M} ({seg['rows']} rows), "
                     f"peak score {seg['peak_score']:.3g}", fontsize=9, loc="left")
        ax.set_ylabel("score", fontsize=8)
        ranked = _top_contributions(inside, PLOT_FEATURES)[::-1]  # largest on top
        bars.barh([name for name, _ in ranked], [value for _, value in ranked], color="#ff7f0e")
        bars.set_title("mean contribution per row", fontsize=9, loc="left")
        bars.tick_params(labelsize=8)
    fig.suptitle(f"{title}: top {len(segments)} anomaly segments", fontsize=11)
    fig.tight_layout()
    return ui.figure_png(fig)


def night_report_key(cfg: DatasetConfig, day: date, name: str) -> str:
    """Where a night's UI report files (plots) live: beside, not inside, the scores partition
    (its folder stays pure Parquet for Spark and DuckDB)."""
    return f"reports/{cfg.name}/date={day.isoformat()}/{name}"


def plot_scores(store: Store, night: NightResult, top: list[dict[str, Any]]) -> pl.DataFrame:
    """The rows the night's plot draws: the top segments' entities (a fleet's night can hold
    millions of rows; the plot needs a handful of entities)."""
    keys = [k for s in night.scopes for k in s.scoring.keys]
    wanted = list(dict.fromkeys(seg["entity"] for seg in top[:PLOT_SEGMENTS]))
    columns = ["timestamp", "entity", "score", "threshold"]
    if wanted:
        columns += [c for c in store.read_parquet(keys[0]).column_names
                    if c.startswith(CONTRIB_PREFIX)]
    frames = [pl.from_arrow(store.read_parquet(k, columns)) for k in keys]
    scores = pl.concat(frames, how="diagonal_relaxed")
    if not wanted:
        wanted = scores["entity"].unique(maintain_order=True).head(PLOT_ENTITIES).to_list()
    return scores.filter(pl.col("entity").is_in(wanted))


def write_night_plot(cfg: DatasetConfig, store: Store, night: NightResult) -> str | None:
    """Draw and store the night's plot; its key, or None (nothing scored / no matplotlib)."""
    if not night.scopes:
        return None
    try:
        import matplotlib  # noqa: F401 - absent on a torch-free scoring-only worker
    except ImportError:
        run_logger(__name__).warning("%s %s: matplotlib is not installed: no night plot",
                                     cfg.name, night.date)
        return None
    top = top_segments(night)
    scores = plot_scores(store, night, top)
    with process_lock("matplotlib"):
        png = night_png(scores, top, f"{cfg.name}, night of {night.date}")
    key = night_report_key(cfg, date.fromisoformat(night.date), SEGMENTS_PLOT)
    store.write_bytes(key, png)
    return key


# -- Markdown and artifacts -----------------------------------------------------------------


@dataclass(frozen=True)
class NightLinks:
    """Where the night's data is, as URLs a browser opens (tasks.ui) and as store URIs."""

    scores: tuple[str, str] | None = None  # (store URI, URL)
    plot_src: str | None = None
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (one-line reason, URL)
    note: str = ""


def _listed(names: list[str]) -> str:
    more = f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def night_markdown(night: NightResult, links: NightLinks | None = None) -> str:
    """The night at a glance: rows, anomalies, segments, model versions, drift, gaps, and
    (with links) the scores partition, the plot and each quarantined batch."""
    links = links or NightLinks()
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
        (f"| scored with | {', '.join(scoring['backends']) or '—'}"
         f"{' (' + '; '.join(scoring['notes']) + ')' if scoring['notes'] else ''} |"),
        f"| drift | {verdict} |",
        f"| drift event | {', '.join(events) or '—'} |",
    ]
    if night.plan.fallback:
        lines.append(f"| scored by the dataset-level model (no model of their own) | "
                     f"{_listed(night.plan.fallback)} |")
    if night.plan.not_modelled:
        lines.append(f"| **not scored: no model** | {_listed(night.plan.not_modelled)} |")
    if links.scores:
        lines.append(f"| scores | {ui.md_link(links.scores[0], links.scores[1])} |")
    quarantined = len(night.ingestion.quarantined)
    if quarantined:
        lines.append(f"| quarantined batches | {quarantined} |")
    if links.plot_src:
        lines += ["", "## Top segments and their features", "",
                  ui.md_image(f"{night.dataset} {night.date}: top segments", links.plot_src)]
    if links.quarantined:
        lines += ["", "## Quarantined batches", "",
                  *(f"- {ui.md_link(reason, url)}" for reason, url in links.quarantined)]
    if links.note:
        lines += ["", links.note]
    return "\n".join(lines)


def top_segments(night: NightResult) -> list[dict[str, Any]]:
    rows = [r for s in night.scopes if s.alerts for r in s.alerts.top]
    return sorted(rows, key=lambda r: -r["x_threshold"])[:TOP_SEGMENTS]


def night_links(cfg: DatasetConfig, store: Store, night: NightResult,
                plot_key: str | None) -> NightLinks:
    prefix = scores_prefix(cfg, date.fromisoformat(night.date))
    return NightLinks(
        scores=(store.uri(prefix), ui.folder_url(cfg, store, prefix, night.scopes[0].scoring.keys[0]
                                                 .removeprefix(f"{prefix}/"))) if night.scopes else None,
        plot_src=ui.image_src(cfg, store, plot_key) if plot_key else None,
        quarantined=[(link_text(b), ui.object_url(cfg, store, validation_key(b)))
                     for b in night.ingestion.quarantined],
        note=ui.url_note(cfg, store, plots=plot_key is not None),
    )


@task(name="publish-night-artifacts", cache_policy=NO_CACHE)
def publish_night(cfg: DatasetConfig, night: NightResult) -> list[str]:
    """Markdown summary (with the night's plot and links), the top segments as a table and
    a link to the scores partition, under stable per-dataset keys."""
    store = store_for(cfg)
    summary_key = artifact_key("nightly", cfg.name)
    segments_key = artifact_key("nightly", cfg.name, "segments")
    links = night_links(cfg, store, night, write_night_plot(cfg, store, night))
    create_markdown_artifact(key=summary_key, markdown=night_markdown(night, links),
                             description=f"nightowl night {night.date}")
    create_table_artifact(key=segments_key, table=top_segments(night),
                          description=f"top anomaly segments, night {night.date}")
    keys = [summary_key, segments_key]
    if links.scores:
        keys.append(ui.publish_link(
            artifact_key("nightly", cfg.name, "scores"), links.scores[1],
            f"scores of {cfg.name}, night of {night.date}",
            (f"The night's scores partition {links.scores[0]} ({night.rows} rows, "
             f"{night.anomalies} anomalous; Parquet parts, one row per input row). "
             f"{ui.url_note(cfg, store, plots=False)}")))
    return keys


class BackfillProgress:
    """The progress artifact of a backfill: nights done out of the range, the last one named."""

    def __init__(self, cfg: DatasetConfig, days: list[date]) -> None:
        self.total, self.done = len(days), 0
        span = f"{days[0]} to {days[-1]}" if days else "no nights"
        self.bar = ui.LiveProgress(artifact_key("backfill", cfg.name),
                                f"backfill of {cfg.name}: {span}, 0/{self.total} nights")

    def night_done(self, night: NightResult) -> None:
        self.done += 1
        what = (f"{night.rows} rows, {night.anomalies} anomalous" if night.status == "scored"
                else night.status)
        self.bar.update(100.0 * self.done / max(self.total, 1),
                        f"{self.done}/{self.total} nights · last: {night.date} ({what})",
                        force=True)
