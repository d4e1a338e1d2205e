"""The labels table and its ways in that need no server: Python, CLI, incident import; bad
input (named row and field, nothing written); exactly once; two writers at once; the same on
S3 (delta-rs through the Store's endpoint and keys). The review: tests/test_review*.py."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime

import polars as pl
import pytest
from typer.testing import CliRunner

from schemas.config import DatasetConfig
from tasks.feedback.imports import import_labels
from tasks.feedback.labels import (
    LabelError,
    current_labels,
    delta_location,
    label,
    label_history,
    labels_key,
    require_dataset,
)
from tasks.store import Store
from tests.labelled import DAY1, DAY1_END, ENTITY, ingested, without_labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[DatasetConfig, str]:
    return ingested(tmp_path_factory.mktemp("labels"))


@pytest.fixture
def fresh(tiny) -> DatasetConfig:
    """The tiny dataset with an empty labels table (the validated layer is shared)."""
    return without_labels(tiny[0])


def test_one_answer_per_key_latest_wins_every_answer_kept(fresh):
    cfg = fresh
    first = label(cfg, ENTITY, DAY1, DAY1_END, "anomaly", who="ana", note="pump", key="t-1")
    again = label(cfg, ENTITY, DAY1, DAY1_END, "anomaly", who="ana", note="pump", key="t-1")
    assert (first.written, again.written, again.duplicates) == (1, 0, 1)
    assert again.version == first.version  # the retry committed nothing
    label(cfg, ENTITY, DAY1, DAY1_END, "normal", who="ben", note="maintenance window")
    history = label_history(cfg)
    assert history["who"].to_list() == ["ana", "ben"]  # both operators kept, in order
    (now,) = current_labels(cfg).iter_rows(named=True)
    assert (now["verdict"], now["who"], now["source"]) == ("normal", "ben", "cli")
    assert now["start"] == datetime(2026, 1, 6, 1, tzinfo=UTC)
    assert now["segment"] == f"{ENTITY}@2026-01-06T01:00:00+00:00/2026-01-06T03:00:00+00:00"
    # what a data engineer's tool reads: the Delta table itself
    uri, options = delta_location(Store(cfg.store.root), labels_key(cfg))
    assert pl.read_delta(uri, storage_options=options).height == 2


def test_times_with_an_offset_are_stored_in_utc(fresh):
    label(fresh, ENTITY, "2026-01-06T03:00:00+02:00", "2026-01-06T04:00:00+02:00", "unsure")
    (row,) = current_labels(fresh).iter_rows(named=True)
    assert row["start"] == datetime(2026, 1, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize(("entity", "start", "end", "verdict", "named"), [
    ("machine-99", DAY1, DAY1_END, "anomaly", "field 'entity': 'machine-99' is not an entity"),
    (ENTITY, DAY1_END, DAY1, "anomaly", "is before start"),
    (ENTITY, "2025-03-01T00:00:00", "2025-03-02T00:00:00", "anomaly", "outside any data"),
    (ENTITY, DAY1, DAY1_END, "broken", "field 'verdict'"),
    (ENTITY, "yesterday", DAY1_END, "anomaly", "field 'start'"),
])
def test_bad_labels_are_named_and_nothing_is_written(fresh, entity, start, end, verdict, named):
    with pytest.raises(LabelError, match=named):
        label(fresh, entity, start, end, verdict)
    assert label_history(fresh).height == 0
    assert not Store(fresh.store.root).exists(labels_key(fresh))


def test_unknown_dataset_is_refused(fresh):
    with pytest.raises(LabelError, match="field 'dataset': unknown dataset 'tiyn'"):
        require_dataset(fresh, "tiyn")


def test_an_entity_named_in_the_config_but_without_rows_yet_is_known(tmp_path):
    cfg, _ = ingested(tmp_path, model={"scope": "group",
                                       "groups": {"pumps": [ENTITY, "machine-new"]}})
    done = label(cfg, "machine-new", DAY1, DAY1_END, "anomaly")
    assert done.written == 1
    with pytest.raises(LabelError, match="outside any data"):  # still: a period with data
        label(cfg, "machine-new", "2025-01-01T00:00:00", "2025-01-02T00:00:00", "anomaly")


def test_two_writers_at_once_both_land_once(fresh):
    errors: list[BaseException] = []

    def write(who: str) -> None:
        try:
            for i in range(3):
                label(fresh, ENTITY, DAY1, DAY1_END, "anomaly", who=who, key=f"{who}-{i}")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in ("ana", "ben")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    history = label_history(fresh)
    assert sorted(history["request"].to_list()) == sorted(
        f"cli:{w}-{i}" for w in ("ana", "ben") for i in range(3))


INCIDENTS = """ticket,machine,opened,closed,outcome,summary
INC-1,machine-00,2026-01-06 01:00,2026-01-06 02:00,confirmed,bearing noise
INC-2,machine-00,2026-01-07 10:00,2026-01-07 10:30,false positive,
INC-3,machine-00,2026-01-08 00:00,2026-01-08 04:00,anomaly,overheating
"""


def import_config(cfg: DatasetConfig) -> DatasetConfig:
    """The tiny config with a ticketing system's export mapped in [feedback]."""
    feedback = cfg.feedback.model_validate({
        "import_columns": {"id": "ticket", "entity": "machine", "start": "opened",
                           "end": "closed", "verdict": "outcome", "note": "summary"},
        "import_verdicts": {"confirmed": "anomaly", "false positive": "normal"},
        "import_time_format": "%Y-%m-%d %H:%M"})
    return cfg.model_copy(update={"feedback": feedback})


def test_import_maps_columns_and_reimport_writes_nothing_twice(fresh, tmp_path):
    cfg = import_config(fresh)
    path = tmp_path / "incidents.csv"
    path.write_text(INCIDENTS)
    done = import_labels(cfg, path)
    assert (done.requested, done.written) == (3, 3)
    assert import_labels(cfg, path).written == 0  # the same export again
    now = current_labels(cfg)
    assert now["verdict"].to_list() == ["anomaly", "normal", "anomaly"]
    assert now["source"].unique().to_list() == ["import"]
    assert now["note"].to_list() == ["bearing noise", None, "overheating"]


@pytest.mark.parametrize(("line", "named"), [
    ("INC-4,machine-00,2026-01-08 05:00,2026-01-08 06:00,maybe,x",
     "row 4: field 'verdict' (column 'outcome'): 'maybe' is not one of"),
    ("INC-4,machine-00,08/01/2026,2026-01-08 06:00,confirmed,x",
     "row 4: field 'start' (column 'opened'): '08/01/2026' is not a time"),
    ("INC-4,machine-07,2026-01-08 05:00,2026-01-08 06:00,confirmed,x",
     "row 4: field 'entity': 'machine-07' is not an entity"),
    ("INC-4,machine-00,2026-01-08 06:00,2026-01-08 05:00,confirmed,x",
     "row 4: field 'end'"),
    ("INC-4,machine-00,2027-01-08 05:00,2027-01-08 06:00,confirmed,x",
     "row 4: fields 'start'/'end': no validated rows"),
])
def test_one_bad_row_stops_the_whole_import(fresh, tmp_path, line, named):
    cfg = import_config(fresh)
    path = tmp_path / "incidents.csv"
    path.write_text(INCIDENTS + line + "\n")
    with pytest.raises(LabelError, match=re.escape(named)) as caught:
        import_labels(cfg, path)
    assert str(path) in str(caught.value)
    assert label_history(cfg).height == 0


def test_an_export_without_the_mapped_columns_is_refused(fresh, tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("id,host,when\n1,machine-00,2026-01-06\n")
    with pytest.raises(LabelError, match=r"column\(s\) \['end', 'entity', 'start', 'verdict'\] "
                                         r"missing"):
        import_labels(fresh, path)
    assert label_history(fresh).height == 0


def test_cli_label_import_and_list(tiny, fresh, tmp_path):
    from flows.cli import app

    _, config = tiny
    runner = CliRunner()
    ok = runner.invoke(app, ["label", "tiny", ENTITY, DAY1, DAY1_END, "anomaly", "--note",
                             "seen on site", "--who", "ops", "--request-id", "r-1", "-c", config])
    assert ok.exit_code == 0, ok.output
    assert "1 label written (0 already there)" in ok.output
    retried = runner.invoke(app, ["label", "tiny", ENTITY, DAY1, DAY1_END, "anomaly",
                                  "--request-id", "r-1", "-c", config])
    assert "0 label written (1 already there)" in retried.output
    wrong = runner.invoke(app, ["label", "tiny2", ENTITY, DAY1, DAY1_END, "anomaly", "-c", config])
    assert wrong.exit_code == 1 and "unknown dataset 'tiny2'" in wrong.output
    bad = runner.invoke(app, ["label", "tiny", ENTITY, DAY1, DAY1_END, "bad", "-c", config])
    assert bad.exit_code == 1 and "field 'verdict'" in bad.output
    path = tmp_path / "incidents.csv"
    path.write_text(f"entity,start,end,verdict\n{ENTITY},{DAY1},{DAY1},normal\n")
    imported = runner.invoke(app, ["label-import", str(path), "-c", config])
    assert imported.exit_code == 0 and "1 new label(s)" in imported.output, imported.output
    listed = runner.invoke(app, ["labels", "-c", config])
    rows = pl.read_csv(listed.stdout.encode())
    assert sorted(rows["verdict"].to_list()) == ["anomaly", "normal"]
    assert set(rows["who"].to_list()) >= {"ops"}


@pytest.mark.integration
def test_labels_on_s3_once_per_key_with_concurrent_writers(tmp_path):
    from tests.s3_server import s3_endpoint

    with s3_endpoint("nightowl-labels") as url:
        cfg, _ = ingested(tmp_path, store={"root": "s3://nightowl-labels/store"})
        uri, options = delta_location(Store(cfg.store.root), labels_key(cfg))
        assert uri.startswith("s3://nightowl-labels/store/labels/tiny")
        assert options["AWS_ENDPOINT_URL"] == url and options["conditional_put"] == "etag"
        assert label(cfg, ENTITY, DAY1, DAY1_END, "anomaly", key="s-1").written == 1
        assert label(cfg, ENTITY, DAY1, DAY1_END, "anomaly", key="s-1").written == 0
        results: list[int] = []
        threads = [threading.Thread(target=lambda k=k: results.append(
            label(cfg, ENTITY, DAY1, DAY1_END, "normal", key=k).written)) for k in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [1, 1]
        assert sorted(label_history(cfg)["request"].to_list()) == ["cli:a", "cli:b", "cli:s-1"]
