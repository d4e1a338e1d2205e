"""The night's review: its top alert segments as a typed form, the answers as labels.

The segments come from what the nightly flow wrote: each model scope's alert log of the
night (`alerts/<scope>/date=<day>/alerts.jsonl`, tasks/nightly/alert.py) and the night's
plot (tasks/nightly/report.py). The form is a Prefect `RunInput` the UI renders: one entry
per segment with confirm / dismiss / unsure / skip, and missed incidents by time range.
Answers become labels with the idempotency key `ui:<flow run>:<segment>`, so a form that
reaches the write twice (a retried task, a resumed run replayed) writes once.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any, Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, RUN_ID
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field

from schemas.config import DatasetConfig
from tasks import ui
from tasks.common import IO_RETRIES, artifact_key, run_logger, store_for
from tasks.feedback.labels import (
    LabelError,
    LabelRequest,
    LabelsWritten,
    as_requests,
    record_labels,
)
from tasks.nightly.alert import peak_ratio
from tasks.nightly.night_report import SEGMENTS_PLOT, night_report_key
from tasks.store import Store

Answer = Literal["confirm", "dismiss", "unsure", "skip"]
VERDICT_OF: dict[str, str] = {"confirm": "anomaly", "dismiss": "normal", "unsure": "unsure"}


class ReviewSegment(BaseModel):
    """One alerted segment as the review shows it (from the night's alert log)."""

    model_config = ConfigDict(frozen=True)

    id: str
    entity: str
    start: datetime
    end: datetime
    rows: int
    peak_score: float
    x_threshold: float
    top_features: list[str]
    model_version: str


class SegmentAnswer(BaseModel):
    """The form's line for one segment; only `answer` and `note` are the operator's."""

    segment: str = Field(..., description="alert segment id (entity@start)")
    entity: str
    start: datetime
    end: datetime
    top_features: str = Field("", description="features contributing most to the score")
    answer: Answer = Field("skip", description="confirm: a real anomaly; dismiss: a false "
                           "alarm; unsure: cannot tell; skip: not reviewed")
    note: str = ""


class MissedIncident(BaseModel):
    """An anomaly the night did not alert on, by time range (UTC)."""

    entity: str
    start: datetime
    end: datetime
    note: str = ""


class ReviewInput(RunInput):
    """What the operator submits to resume the review run."""

    reviewer: str = Field(..., min_length=1, max_length=200, description="your name")
    segments: list[SegmentAnswer] = Field(default_factory=list)
    missed: list[MissedIncident] = Field(default_factory=list,
                                         description="incidents nightowl did not alert on")


def alert_logs(store: Store, cfg: DatasetConfig, day: date) -> list[str]:
    """The night's alert logs of every model scope (dataset, entities, groups)."""
    suffix = f"/date={day.isoformat()}/alerts.jsonl"
    return [k for k in store.list(f"alerts/{cfg.name}") if k.endswith(suffix)]


def night_segments(store: Store, cfg: DatasetConfig, day: date) -> list[ReviewSegment]:
    """The top `top_k` segments of each model scope by peak over threshold, at most
    `review_budget` in all, highest first."""
    chosen: list[dict[str, Any]] = []
    for key in alert_logs(store, cfg, day):
        records = [json.loads(line) for line in store.read_bytes(key).decode().splitlines() if line]
        chosen += sorted(records, key=lambda r: -peak_ratio(r))[: cfg.feedback.top_k]
    chosen = sorted(chosen, key=lambda r: -peak_ratio(r))[: cfg.feedback.review_budget]
    return [ReviewSegment(id=r["id"], entity=r["entity"], start=r["start"], end=r["end"],
                          rows=r["rows"], peak_score=r["peak_score"],
                          x_threshold=round(peak_ratio(r), 3), top_features=r["top_features"],
                          model_version=r["model_version"]) for r in chosen]


def review_markdown(cfg: DatasetConfig, day: date, segments: list[ReviewSegment],
                    plot_src: str | None) -> str:
    """What the reviewer reads before answering: the segments, their features, the plot."""
    lines = [f"# Review — {cfg.name}, night of {day.isoformat()}", "",
             f"{len(segments)} segment(s) to review. Answer each in the form (Resume): confirm "
             "(a real anomaly), dismiss (a false alarm), unsure, or skip; add incidents the "
             "night missed. Answers become labels in the dataset's labels table.", "",
             "| # | entity | start | end | rows | peak / threshold | top features | segment |",
             "|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(segments, start=1):
        lines.append(f"| {i} | {ui.md_text(s.entity)} | {s.start:%Y-%m-%d %H:%M} | "
                     f"{s.end:%Y-%m-%d %H:%M} | {s.rows} | {s.x_threshold:.3g} | "
                     f"{ui.md_text(', '.join(s.top_features))} | `{ui.md_text(s.id)}` |")
    if plot_src:
        lines += ["", "## Top segments and their features", "",
                  ui.md_image(f"{cfg.name} {day}: top segments", plot_src)]
    return "\n".join(lines)


def review_form(segments: list[ReviewSegment], description: str) -> type[ReviewInput]:
    """The form pre-filled with the night's segments (every answer starts as skip)."""
    lines = [SegmentAnswer(segment=s.id, entity=s.entity, start=s.start, end=s.end,
                           top_features=", ".join(s.top_features)) for s in segments]
    return ReviewInput.with_initial_data(description=description, segments=lines)


def answers_as_labels(segments: list[ReviewSegment], form: ReviewInput, run_id: str
                      ) -> tuple[list[LabelRequest], list[str]]:
    """Label requests from a submitted form. Periods come from the listed segments, never from
    the form (an edited start cannot move a label); an answer to a segment the review did not
    list is refused."""
    listed = {s.id: s for s in segments}
    unknown = [a.segment for a in form.segments if a.segment not in listed]
    if unknown:
        raise LabelError(f"review form: field 'segments': {unknown[:5]} were not listed in this "
                         f"review (listed: {sorted(listed)[:5]}...)")
    rows, where = [], []
    for answer in form.segments:
        if answer.answer == "skip":
            continue
        seg = listed[answer.segment]
        rows.append({"entity": seg.entity, "start": seg.start, "end": seg.end,
                     "verdict": VERDICT_OF[answer.answer], "who": form.reviewer,
                     "note": answer.note or None, "segment": seg.id,
                     "key": f"{run_id}:{seg.id}"})
        where.append(f"review form segment {seg.id}")
    for i, missed in enumerate(form.missed, start=1):
        rows.append({"entity": missed.entity, "start": missed.start, "end": missed.end,
                     "verdict": "anomaly", "who": form.reviewer, "note": missed.note or None,
                     "key": f"{run_id}:missed:{missed.entity}:{missed.start}:{missed.end}"})
        where.append(f"review form missed incident {i}")
    return as_requests(rows, where), where


@task(name="review-segments", cache_policy=INPUTS + RUN_ID, persist_result=True,
      result_serializer="json")
def prepare_review(cfg: DatasetConfig, day: date) -> list[dict[str, Any]]:
    """List the night's segments and publish the review artifact, once per review run: the
    run starts again from the top when resumed, and must then see the same segments."""
    store = store_for(cfg)
    segments = night_segments(store, cfg, day)
    plot_key = night_report_key(cfg, day, SEGMENTS_PLOT)
    plot_src = ui.image_src(cfg, store, plot_key) if store.exists(plot_key) else None
    if segments:
        create_markdown_artifact(key=artifact_key("review", cfg.name),
                                 markdown=review_markdown(cfg, day, segments, plot_src),
                                 description=f"segments to review, night {day}")
    run_logger(__name__).info("%s %s: %d segment(s) to review", cfg.name, day, len(segments))
    return [s.model_dump(mode="json") for s in segments]


def _retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures, not answers that cannot be labels (they fail the same way again)."""
    try:
        state.result()
    except LabelError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


@task(name="record-review", cache_policy=NO_CACHE, retry_condition_fn=_retry_unless_bad_input,
      **IO_RETRIES)
def record_review(cfg: DatasetConfig, segments: list[ReviewSegment], form: ReviewInput,
                  run_id: str) -> LabelsWritten | None:
    """Write the answers as labels (exactly once per run and segment); None: all skipped."""
    requests, where = answers_as_labels(segments, form, run_id)
    if not requests:
        return None
    return record_labels(cfg, requests, "ui", where)
