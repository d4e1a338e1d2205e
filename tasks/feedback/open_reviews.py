"""Reviews waiting for an operator: the dataset's suspended review runs, read from the Prefect
API, each with a link to its page in the UI (where Resume opens the form).

A review run is the dataset's when its `config` parameter is the one this review was started
with (every review run has it; deployment tags differ between `nightowl serve` and
infra/prefect.yaml); inside a deployment the query is narrowed to that deployment's runs so a
fleet of datasets sharing one API is not read whole. The night comes from the suspension's
key (`review-<night>`, flows/review.py), the expiry from the pause timeout the server enforces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from tasks import ui
from tasks.common import run_logger

REVIEW_FLOW = "nightowl-review"  # flows/review.py's @flow name
PAUSE_KEY_PREFIX = "review-"  # flows/review.py suspends with key=f"review-{night}"
MAX_READ = 200  # runs read per publication: one API page
MAX_LISTED = 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class OpenReview:
    """One review run waiting for its form."""

    run_id: str
    name: str
    night: date | None
    since: datetime | None  # when it was suspended
    expires: datetime | None
    url: str | None  # its page in the Prefect UI; None when no UI URL is known


@dataclass(frozen=True)
class OpenReviews:
    """The open reviews, newest first; `error` says why the API could not be read."""

    runs: list[OpenReview] = field(default_factory=list)
    error: str | None = None

    def with_waiting(self, review: OpenReview) -> OpenReviews:
        """These plus a run about to suspend (its state is still Running when it publishes)."""
        others = [r for r in self.runs if r.run_id != review.run_id]
        return OpenReviews([review, *others], self.error)


def run_url(run_id: str) -> str | None:
    """The run's page in the Prefect UI (`PREFECT_UI_URL`, else derived from the API URL)."""
    from prefect.utilities.urls import url_for

    return url_for("flow-run", obj_id=run_id) or None


def night_of(run: Any) -> date | None:
    """The night a review run reviews: its suspension key, else its `day` parameter."""
    key = run.state.state_details.pause_key if run.state else None
    text = key.removeprefix(PAUSE_KEY_PREFIX) if key and key.startswith(PAUSE_KEY_PREFIX) \
        else run.parameters.get("day")
    try:
        return date.fromisoformat(str(text)) if text else None
    except ValueError:
        return None


def as_open_review(run: Any) -> OpenReview:
    state = run.state
    return OpenReview(run_id=str(run.id), name=run.name, night=night_of(run),
                      since=state.timestamp if state else None,
                      expires=state.state_details.pause_timeout if state else None,
                      url=run_url(str(run.id)))


def read_open_reviews(config: str | None, deployment_id: str | None = None) -> list[OpenReview]:
    """Suspended runs of the review flow started with `config`, the latest night first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[REVIEW_FLOW])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            if deployment_id else None,
            sort=FlowRunSort.START_TIME_DESC, limit=MAX_READ)
    mine = [as_open_review(r) for r in runs if r.parameters.get("config") == config]
    return sorted(mine, key=lambda r: (r.night or date.min, r.since or _EPOCH), reverse=True)


def open_reviews(config: str | None, deployment_id: str | None = None) -> OpenReviews:
    """`read_open_reviews`, or the reason it failed: the artifact must never fail a review."""
    try:
        return OpenReviews(read_open_reviews(config, deployment_id))
    except Exception as err:  # noqa: BLE001 - an unreachable API is reported, not raised
        run_logger(__name__).warning("open reviews: the Prefect API could not be read (%s: %s)",
                                     type(err).__name__, err)
        return OpenReviews(error=f"{type(err).__name__}: {err}"[:200])


def _when(moment: datetime | None) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M}" if moment else "—"


def open_reviews_markdown(reviews: OpenReviews) -> list[str]:
    """The artifact's section: one line per waiting review, newest first, with its link."""
    lines = ["## Open reviews (waiting for an answer)", ""]
    if reviews.error:
        return [*lines, f"The Prefect API could not be read ({ui.md_text(reviews.error)}): see "
                "the review runs in state Suspended in the UI."]
    if not reviews.runs:
        return [*lines, "None: every review has been answered or has expired."]
    lines += [f"{len(reviews.runs)} review run(s) wait for their form: open one and press "
              "Resume. Times are UTC.", "",
              "| night | review run | waiting since | expires |", "|---|---|---|---|"]
    for r in reviews.runs[:MAX_LISTED]:
        run = ui.md_link(r.name, r.url) if r.url else f"{ui.md_text(r.name)} (`{r.run_id}`)"
        lines.append(f"| {r.night or '—'} | {run} | {_when(r.since)} | {_when(r.expires)} |")
    if len(reviews.runs) > MAX_LISTED:
        lines.append(f"\n{len(reviews.runs) - MAX_LISTED} older open review(s) not listed.")
    return lines
