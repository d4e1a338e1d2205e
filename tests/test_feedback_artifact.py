"""The feedback artifact as a fleet's operator reads it: pooled alert precision per week and a
handful of entities in a plot, bounded tables, and the review runs waiting for an answer,
read from a real Prefect API (the suspended run of a real server: tests/test_review_server.py).
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from tests.labelled import ingested

MONDAY = datetime(2026, 1, 5)  # ISO week 2026-W02


def _labels(answers: dict[str, list[tuple[int, int, int]]]) -> pl.DataFrame:
    """Labels answering alerts: entity -> [(week offset, confirmed, dismissed)], one hour each."""
    rows = []
    for entity, weeks in answers.items():
        for offset, confirmed, dismissed in weeks:
            for i, verdict in enumerate(["anomaly"] * confirmed + ["normal"] * dismissed):
                start = MONDAY + timedelta(weeks=offset, hours=i)
                rows.append({"entity": entity, "start": start, "end": start + timedelta(hours=1),
                             "segment": f"{entity}@{start.isoformat()}", "verdict": verdict})
    return pl.DataFrame(rows)


def test_pooled_precision_pools_alerts_not_entities_precisions() -> None:
    from tasks.feedback.feedback_report import (
        alert_precision,
        least_precise_first,
        pooled_precision,
    )

    per_entity = alert_precision(_labels({"a": [(0, 1, 3), (1, 2, 0)], "b": [(0, 1, 0)],
                                          "c": [(1, 0, 6)]}))
    pooled = pooled_precision(per_entity)
    assert pooled.select("week", "entities", "reviewed", "confirmed").rows() == [
        ("2026-W02", 2, 5, 2), ("2026-W03", 2, 8, 2)]
    # 2/5 and 2/8; the mean of the entities' precisions would be (1/4 + 1)/2 and (1 + 0)/2
    assert pooled["precision"].to_list() == pytest.approx([0.4, 0.25])
    # overall precision c 0/6, a 3/6, b 1/1: the least precise first
    assert least_precise_first(per_entity)["entity"].to_list() == ["c", "a", "a", "b"]


def test_a_fleet_plot_draws_the_pool_and_the_most_reviewed_few() -> None:
    from tasks.feedback.feedback_report import (
        PLOT_ENTITIES,
        TABLE_ROWS,
        _entity_table,
        most_reviewed,
        pooled_precision,
        precision_caption,
        precision_figure,
    )

    entities = [f"m-{i:02d}" for i in range(40)]
    per_entity = pl.DataFrame({  # entity i: i + 1 reviewed alerts in each of two weeks
        "entity": entities * 2, "week": ["2026-W02"] * 40 + ["2026-W03"] * 40,
        "reviewed": list(range(1, 41)) * 2, "confirmed": [i // 2 for i in range(1, 41)] * 2,
    }).with_columns(dismissed=pl.col("reviewed") - pl.col("confirmed"),
                    precision=pl.col("confirmed") / pl.col("reviewed"))
    shown = most_reviewed(per_entity)
    assert shown == ["m-39", "m-38", "m-37", "m-36", "m-35"] and len(shown) == PLOT_ENTITIES

    figure = precision_figure(pooled_precision(per_entity), per_entity, shown, "fleet")
    ax = figure.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == [*shown, "all 40 entities, pooled"]
    pooled_line = ax.get_lines()[-1].get_ydata()
    assert list(pooled_line) == pytest.approx([400 / 820] * 2)  # sum(i // 2) / sum(i), i=1..40
    assert sum(len(c) for c in figure.axes[1].containers) == 2  # one bar per week
    caption = precision_caption(shown, 40)
    assert "m-39, m-38, m-37, m-36, m-35" in caption and "35 other entities not drawn" in caption

    table = "\n".join(_entity_table(per_entity))
    assert table.count("| m-") == TABLE_ROWS
    assert "40 more row(s) left out (20 entities" in table
    assert "| m-00 | 2026-W02 | 1 | 0 | 1 | 0.00 |" in table  # the least precise first


def test_without_matplotlib_the_artifact_says_so_and_keeps_its_tables(tmp_path,
                                                                       monkeypatch) -> None:
    from tasks.common import store_for
    from tasks.feedback.feedback_report import (
        alert_precision,
        feedback_markdown,
        write_precision_plot,
    )

    cfg, _ = ingested(tmp_path)
    labels = _labels({"a": [(0, 1, 1)]}).with_columns(
        recorded_at=pl.lit(datetime(2026, 1, 8, tzinfo=UTC)), source=pl.lit("ui"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # a `nightowl[scoring]` worker
    plot = write_precision_plot(cfg, store_for(cfg), alert_precision(labels))
    assert plot is not None and plot.src is None
    text = feedback_markdown(cfg, labels, datetime(2026, 1, 9, tzinfo=UTC), plot)
    assert "matplotlib is not installed" in text and "![" not in text
    assert "| 2026-W02 | 1 | 2 | 1 | 1 | 0.50 |" in text  # the pooled table


def test_the_artifact_shows_the_plot_and_the_datasets_suspended_reviews(tmp_path,
                                                                        prefect_harness) -> None:
    from prefect import flow
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
    from prefect.states import Suspended

    from flows.review import review_flow
    from tasks.feedback.feedback_report import publish_feedback
    from tasks.feedback.labels import label
    from tasks.feedback.open_reviews import open_reviews, open_reviews_markdown
    from tests.labelled import ENTITY

    cfg, config = ingested(tmp_path)
    for hour, verdict in ((1, "anomaly"), (5, "normal")):
        at = datetime(2026, 1, 6, hour)
        label(cfg, ENTITY, at, at + timedelta(hours=1), verdict, segment=f"{ENTITY}@{at}")

    def suspended_review(config_path: str, night: date) -> str:
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(review_flow, parameters={
                "config": config_path, "day": night.isoformat()})
            client.set_flow_run_state(run.id, Suspended(
                timeout_seconds=3600, pause_key=f"review-{night}"), force=True)
        return str(run.id)

    older = suspended_review(config, date(2026, 1, 8))
    newer = suspended_review(config, date(2026, 1, 9))
    other = suspended_review(str(tmp_path / "another-dataset.toml"), date(2026, 1, 9))

    @flow
    def publishes() -> str:
        return publish_feedback(cfg, open_reviews(config))

    text = publishes()
    assert "data:image/png;base64," in text  # a local store: the plot embedded
    assert "## Open reviews" in text and other not in text
    lines = [line for line in text.splitlines() if "/runs/flow-run/" in line]
    assert [line.split("|")[1].strip() for line in lines] == ["2026-01-09", "2026-01-08"]
    assert newer in lines[0] and older in lines[1]
    shown = Artifact.get(f"feedback-{cfg.name}")
    assert shown is not None and shown.data == text

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api",
                             PREFECT_CLIENT_MAX_RETRIES: 0}):
        unreachable = open_reviews(config)
    assert unreachable.runs == [] and unreachable.error
    assert "could not be read" in "\n".join(open_reviews_markdown(unreachable))
