"""The review's pieces in-process (the suspended run itself: tests/test_review_server.py):
which segments a review lists, how a submitted form becomes labels, a night with nothing
to review."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from schemas.config import DatasetConfig
from tasks.feedback.labels import LabelError, labels_key
from tasks.store import Store
from tests.labelled import ENTITY, NIGHT, alert_log, ingested, without_labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[DatasetConfig, str]:
    return ingested(tmp_path_factory.mktemp("review"))


@pytest.fixture
def fresh(tiny) -> DatasetConfig:
    return without_labels(tiny[0])


def test_the_review_lists_top_k_per_scope_within_the_budget(tiny):
    from tasks.feedback.review import night_segments

    cfg, _ = tiny
    cfg = cfg.model_copy(update={"feedback": cfg.feedback.model_copy(
        update={"top_k": 2, "review_budget": 3})})
    alert_log(cfg, {2: 9.0, 10: 8.0, 20: 7.0})  # the dataset-level model's night
    alert_log(cfg.for_group("other"), {4: 2.0, 12: 6.0, 30: 1.5},
              entity="other")  # another scope's log (an entity-scope model)
    listed = night_segments(Store(cfg.store.root), cfg, NIGHT.date())
    assert [s.x_threshold for s in listed] == [9.0, 8.0, 6.0]  # 2 per scope, 3 in all
    assert listed[0].id == f"{ENTITY}@2026-01-09T01:00:00"
    assert listed[0].top_features == ["s02", "s01", "s00"]
    assert night_segments(Store(cfg.store.root), cfg, date(2026, 1, 10)) == []


def test_a_night_without_alerts_asks_nothing(tiny, fresh, prefect_harness):
    from flows.review import review_flow

    _, config = tiny
    result = review_flow(config, date(2026, 1, 10))  # ran without suspending: no deployment
    assert result["status"] == "nothing to review"
    assert not Store(fresh.store.root).exists(labels_key(fresh))


def test_review_answers_become_labels_periods_from_the_listing(fresh):
    from tasks.feedback.review import (
        MissedIncident,
        ReviewInput,
        ReviewSegment,
        SegmentAnswer,
        answers_as_labels,
        record_review,
    )

    listed = [ReviewSegment(id=f"{ENTITY}@2026-01-06T0{h}:00:00", entity=ENTITY,
                            start=datetime(2026, 1, 6, h), end=datetime(2026, 1, 6, h, 30),
                            rows=2, peak_score=3.0, x_threshold=2.0, top_features=["s00"],
                            model_version="v1") for h in (1, 2, 3)]
    form = ReviewInput(reviewer="ana", segments=[
        SegmentAnswer(segment=listed[0].id, entity=ENTITY, start=datetime(2020, 1, 1),
                      end=datetime(2020, 1, 1), answer="confirm"),  # edited times are ignored
        SegmentAnswer(segment=listed[1].id, entity=ENTITY, start=listed[1].start,
                      end=listed[1].end, answer="dismiss", note="restart"),
        SegmentAnswer(segment=listed[2].id, entity=ENTITY, start=listed[2].start,
                      end=listed[2].end)],  # skipped
        missed=[MissedIncident(entity=ENTITY, start=datetime(2026, 1, 7, 4),
                               end=datetime(2026, 1, 7, 5), note="missed leak")])
    requests, _ = answers_as_labels(listed, form, "run-1")
    assert [(r.segment_id, r.verdict) for r in requests][:2] == [
        (listed[0].id, "anomaly"), (listed[1].id, "normal")]
    assert requests[0].start == datetime(2026, 1, 6, 1, tzinfo=UTC)
    assert requests[2].verdict == "anomaly" and requests[2].note == "missed leak"
    assert record_review.fn(fresh, listed, form, "run-1").written == 3
    assert record_review.fn(fresh, listed, form, "run-1").written == 0  # submitted twice
    stranger = form.model_copy(update={"segments": [SegmentAnswer(
        segment="machine-00@2026-01-01T00:00:00", entity=ENTITY, start=listed[0].start,
        end=listed[0].end, answer="confirm")]})
    with pytest.raises(LabelError, match="were not listed in this review"):
        answers_as_labels(listed, stranger, "run-2")


