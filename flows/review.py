"""The operator's review of a night, in the Prefect UI: a suspended run waiting for a form.

    list the night's top alert segments + publish them (artifact `review-<ds>`, with the
    night's plot) -> publish `feedback-<ds>` with this review among the open ones (once per
    run) -> suspend with a typed form (one line per segment: confirm / dismiss /
    unsure / skip; missed incidents) -> on resume: the answers become labels, exactly once ->
    publish `feedback-<ds>` again (precision, open reviews without this one)

Suspended, the run holds no worker: its process exits, and the deployment's worker starts
it again when the form is submitted (Resume in the UI, or `prefect.flow_runs.resume_flow_run`
with `run_input`); the steps before the form are cached for that run, so it resumes on the
same segments (the cache lives in Prefect's result storage: local by default, so workers on
several hosts need a shared one, `PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`; without it a run
resumed elsewhere lists the night again, and answers to a segment no longer listed are
refused). Suspending needs a deployment (`review` in flows/deploy.py and
infra/prefect.yaml). A review nobody answers within `[feedback] review_timeout_hours` is
failed by the server ("paused and never resumed"); nothing is written.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from prefect import flow
from prefect.flow_runs import suspend_flow_run
from prefect.runtime import deployment, flow_run

from flows.common import resolve_config
from schemas.config import DatasetConfig
from tasks.common import artifact_key
from tasks.feedback.adapt import check_feedback, feedback_scopes
from tasks.feedback.feedback_report import announce_review, publish_feedback
from tasks.feedback.labels import current_labels
from tasks.feedback.open_reviews import open_reviews
from tasks.feedback.review import (
    ReviewInput,
    ReviewSegment,
    prepare_review,
    record_review,
    review_form,
)


@flow(name="nightowl-review", log_prints=True)
def review_flow(config: str | None = None, day: date | None = None,
                timeout_hours: float | None = None) -> dict[str, Any]:
    """Ask an operator about the night's top segments (yesterday by default); record the answers."""
    cfg = resolve_config(config)
    day = day or date.today() - timedelta(days=1)
    segments = [ReviewSegment.model_validate(s) for s in prepare_review(cfg, day)]
    if not segments:
        return {"dataset": cfg.name, "night": day.isoformat(), "status": "nothing to review"}
    hours = timeout_hours if timeout_hours is not None else cfg.feedback.review_timeout_hours
    announce_review(cfg, config, day, hours)  # the feedback artifact lists this review as open
    form: ReviewInput = suspend_flow_run(
        wait_for_input=review_form(segments, f"Review of {cfg.name}, night of {day}: the segments "
                                   f"are in the artifact {artifact_key('review', cfg.name)}"),
        timeout=max(1, round(hours * 3600)), key=f"review-{day.isoformat()}")
    written = record_review(cfg, segments, form, str(flow_run.id))
    checks = feedback_after_review(cfg, config, written is not None and written.written > 0)
    return {"dataset": cfg.name, "night": day.isoformat(), "status": "reviewed",
            "reviewer": form.reviewer, "segments": len(segments),
            "answered": sum(a.answer != "skip" for a in form.segments),
            "missed": len(form.missed), "labels_written": written.written if written else 0,
            "labels": written.table if written else None, "feedback": checks}


def feedback_after_review(cfg: DatasetConfig, config: str | None, new_labels: bool
                          ) -> list[dict[str, Any]]:
    """New answers act at once: each judged scope's thresholds are tested against the
    reviewed false alarms, and missed incidents may call for retraining (tasks.feedback.adapt).
    The feedback artifact is published again either way: this review is no longer open."""
    checks = []
    if new_labels:
        entities = current_labels(cfg)["entity"].unique().to_list()
        checks = [check_feedback(scope, config).to_json()
                  for scope in feedback_scopes(cfg, entities)]
    publish_feedback(cfg, open_reviews(config, deployment.id))
    return checks
