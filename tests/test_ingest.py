"""Ingest: real files, real Great Expectations, a real local store.

Every bad input is tried for real and must end in quarantine with a reason that
names the file, the column and the rule, while earlier validated partitions and
the champion pointer stay byte-identical.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from schemas import suites
from schemas.arrow import validated_schema
from schemas.config import DatasetConfig, default_config_path, load_config, parse_config
from tasks.data import ingest, layer, tables
from tasks.store import Store, sha256_bytes

FEATURES = ["a", "b", "c"]
START = datetime(2026, 1, 5, 12, 0)
STEP = timedelta(minutes=30)
ROWS_PER_ENTITY = 48  # 24 h at 30 min: the batch spans two calendar days


def make_cfg(source: Path | str, *, entity: str | None = "entity", label: str | None = "label",
             fmt: str = "auto", **validation: Any) -> DatasetConfig:  # fmt: skip
    """A small config: three features bounded to [-1000, 1000] unless overridden."""
    columns: dict[str, Any] = {
        "timestamp": "timestamp",
        "features": FEATURES,
        "entity": entity,
        "label": label,
    }
    return parse_config(
        {
            "name": "tiny",
            "source": {"path": str(source), "format": fmt},
            "columns": columns,
            "validation": {"value_min": -1000.0, "value_max": 1000.0, **validation},
            "splits": {
                "train": {"start": "2026-01-05T00:00:00", "end": "2026-01-06T00:00:00"},
                "validation": [{"start": "2026-01-06T00:00:00", "end": "2026-01-07T00:00:00"}],
            },
            "families": [{"name": "dense_ae"}],
        },
        origin="test",
    )


def good_frame(start: datetime = START, entities: int = 2) -> pl.DataFrame:
    """Rows interleaved across entities (sorted by time): order only matters per entity."""
    n = ROWS_PER_ENTITY
    parts = [
        pl.DataFrame(
            {
                "timestamp": [start + i * STEP for i in range(n)],
                "entity": [f"m{e}"] * n,
                "a": [float(i) for i in range(n)],
                "b": [float(-i) / 3 for i in range(n)],
                "c": [float(e * 100 + i % 7) for i in range(n)],
                "label": [int(i % 11 == 0) for i in range(n)],
            }
        )
        for e in range(entities)
    ]
    return pl.concat(parts).sort(["timestamp", "entity"])


def csv_bytes(frame: pl.DataFrame) -> bytes:
    return frame.write_csv().encode()


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def snapshot(store: Store, cfg: DatasetConfig) -> dict[str, str]:
    """sha256 of every validated partition and every model file."""
    keys = store.list(f"datasets/{cfg.name}/validated") + store.list(f"models/{cfg.name}")
    return {k: sha256_bytes(store.read_bytes(k)) for k in keys}


# -- the suite -------------------------------------------------------------------------


def test_committed_suite_matches_config() -> None:
    """schemas/suites/synthetic.json must be regenerated whenever synthetic.toml changes."""
    cfg = load_config(default_config_path())
    committed = suites.SUITE_DIR / f"{cfg.name}.json"
    assert committed.read_text() == suites.dump_suite(cfg), (
        "stale suite file: run `python -m schemas.suites schemas/datasets/synthetic.toml`"
    )
    assert json.loads(committed.read_text()) == suites.suite_to_json(cfg)


def test_suite_is_derived_from_config(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, entity=None, label=None, value_min=None, value_max=None,
                   feature_bounds={"b": (-1.0, 1.0)}, min_rows=5)  # fmt: skip
    doc = suites.suite_to_json(cfg)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in doc["expectations"]:
        by_type.setdefault(e["type"], []).append(e)
    assert [e["kwargs"]["column"] for e in by_type["expect_column_to_exist"]] == [
        "timestamp",
        *FEATURES,
    ]
    assert by_type["expect_table_row_count_to_be_between"][0]["kwargs"]["min_value"] == 5
    bounds = {e["kwargs"]["column"]: (e["kwargs"]["min_value"], e["kwargs"].get("max_value"))
              for e in by_type["expect_column_values_to_be_between"]}  # fmt: skip
    assert bounds["a"] == (-suites.FLOAT_MAX, suites.FLOAT_MAX)
    assert bounds["b"] == (-1.0, 1.0)
    assert bounds[suites.STEP_COLUMN] == (0, None)
    step = next(e for e in by_type["expect_column_values_to_be_between"]
                if e["kwargs"]["column"] == suites.STEP_COLUMN)  # fmt: skip
    assert step["kwargs"]["strict_min"] is True
    # no entity: uniqueness falls back to the timestamp alone
    assert by_type["expect_column_values_to_be_unique"][0]["kwargs"]["column"] == "timestamp"
    assert "expect_compound_columns_to_be_unique" not in by_type
    assert all(e["meta"].get("rule") for e in doc["expectations"])
    json.dumps(doc, allow_nan=False)  # strict JSON: no Infinity/NaN in the suite


# -- listing and reading ---------------------------------------------------------------


def test_list_batches_file_dir_glob_url(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ["2026-01-06.csv", "2026-01-05.csv", "notes.txt"]:
        (raw / name).write_bytes(csv_bytes(good_frame()))
    expected = [f"file://{raw}/2026-01-05.csv", f"file://{raw}/2026-01-06.csv"]
    assert ingest.list_batches(make_cfg(raw)) == expected
    assert ingest.list_batches(make_cfg(f"{raw}/*.csv")) == expected
    assert ingest.list_batches(make_cfg(f"file://{raw}/*.csv")) == expected
    assert ingest.list_batches(make_cfg(raw / "2026-01-06.csv")) == expected[1:]
    assert ingest.list_batches(make_cfg(f"{raw}/*.parquet")) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest.list_batches(make_cfg(tmp_path / "nope"))


def test_read_batch_parses_timestamps_csv_and_parquet(tmp_path: Path) -> None:
    frame = good_frame()
    (tmp_path / "x.csv").write_bytes(csv_bytes(frame))
    tz = frame.with_columns(pl.col("timestamp").dt.replace_time_zone("UTC").dt.cast_time_unit("ns"))
    (tmp_path / "x.parquet").write_bytes(parquet_bytes(tz))
    for name in ["x.csv", "x.parquet"]:
        cfg = make_cfg(tmp_path)
        got = ingest.parse_batch(cfg, ingest.fetch_bytes(cfg, f"file://{tmp_path}/{name}"), name)
        assert got.schema["timestamp"] == pl.Datetime("us")
        assert got.get_column("timestamp").to_list() == frame.get_column("timestamp").to_list()


# -- good batches ----------------------------------------------------------------------


def test_good_batch_writes_date_partitions_and_reingest_replaces(
    tmp_path: Path, store: Store
) -> None:
    src = tmp_path / "2026-01-05.csv"
    frame = good_frame()
    src.write_bytes(csv_bytes(frame))
    cfg = make_cfg(src)

    out = ingest.ingest_batch(store, cfg, f"file://{src}")
    assert out.status == "validated" and out.reason is None and out.rows == frame.height
    assert out.keys == ["datasets/tiny/validated/date=2026-01-05",
                        "datasets/tiny/validated/date=2026-01-06"]
    table = tables.open_table(store, "datasets/tiny/validated")
    assert table is not None and table.metadata().partition_columns == ["date"]
    stored = table.to_pyarrow_table()
    assert stored.schema.names == [*validated_schema(cfg).names, "date", "sources"]
    assert set(stored.column("sources").to_pylist()[0]) == {f"file://{src}"}  # each row's source
    first = layer.table_version(store, cfg)

    loaded = layer.load_validated(store, cfg, None, None)
    expected = frame.with_columns(pl.col("label").cast(pl.Int8)).sort(["entity", "timestamp"])
    assert loaded.equals(expected.select(loaded.columns))

    before = snapshot(store, cfg)
    again = ingest.ingest_batch(store, cfg, f"file://{src}")
    assert again == out  # the recorded outcome: the same bytes are not validated twice
    assert snapshot(store, cfg) == before  # no new commit, no new file
    assert len(layer.load_validated(store, cfg, None, None)) == frame.height

    # a corrected re-delivery of the same file replaces its rows, never duplicates them
    corrected = frame.with_columns(pl.col("a") + 1.0)
    src.write_bytes(csv_bytes(corrected))
    replaced = ingest.ingest_batch(store, cfg, f"file://{src}")
    assert replaced.status == "validated" and layer.table_version(store, cfg) == first + 1
    reloaded = layer.load_validated(store, cfg, None, None)
    assert reloaded.height == frame.height
    assert reloaded["a"].sum() == pytest.approx(frame["a"].sum() + frame.height)
    # the snapshot before the correction stays readable by version (time travel)
    assert layer.load_validated(store, cfg, version=first).equals(loaded)
    src.write_bytes(csv_bytes(frame))

    # half-open range, crossing the partition boundary; tz-aware bounds are UTC
    lo, hi = datetime(2026, 1, 5, 23, 0), datetime(2026, 1, 6, 1, 0)
    window = layer.load_validated(store, cfg, lo, hi)
    assert window.get_column("timestamp").min() == lo
    assert window.get_column("timestamp").max() == hi - STEP
    assert window.height == 2 * 4
    assert window.get_column("entity").is_sorted()
    assert layer.load_validated(store, cfg, datetime(2027, 1, 1), None).height == 0


def test_parquet_without_entity_or_label(tmp_path: Path, store: Store) -> None:
    frame = good_frame(entities=1).drop(["entity", "label"])
    src = tmp_path / "day.parquet"
    src.write_bytes(parquet_bytes(frame))
    cfg = make_cfg(src, entity=None, label=None)
    out = ingest.ingest_batch(store, cfg, f"file://{src}")
    assert out.status == "validated", out.reason
    loaded = layer.load_validated(store, cfg, None, None)
    assert loaded.get_column("entity").unique().to_list() == ["default"]
    assert loaded.get_column("label").unique().to_list() == [0]
    assert loaded.schema["label"] == pl.Int8


# -- bad batches: every kind is in tests/test_fault_matrix.py --------------------------------


def _rows(frame: pl.DataFrame, column: str, values: dict[int, Any]) -> pl.DataFrame:
    """Replace some values of one column (by row index), casting the column as needed."""
    series = frame.get_column(column).to_list()
    for i, v in values.items():
        series[i] = v
    return frame.with_columns(pl.Series(column, series, strict=False))


def test_reason_format_and_gx_result(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    frame = _rows(good_frame(), "c", {1: float("inf"), 2: float("-inf")})
    outcome = ingest.validate_frame(cfg, frame, "2026-01-19.csv")
    assert not outcome.success
    assert outcome.reasons == [
        "2026-01-19.csv: column 'c' failed rule 'finite value in [-1000, 1000]' (2 of 96 rows, e.g. [inf, -inf])"
    ]
    json.dumps(outcome.result, allow_nan=False)
    assert outcome.result["success"] is False
    assert ingest.validate_frame(cfg, good_frame(), "ok.csv").success


def test_ingest_source_summary(tmp_path: Path, store: Store) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2026-01-05.csv").write_bytes(csv_bytes(good_frame()))
    (raw / "2026-01-07.csv").write_bytes(csv_bytes(good_frame(START + timedelta(days=2))))
    bad = _rows(good_frame(START + timedelta(days=4)), "a", {0: float("nan")})
    (raw / "2026-01-09.csv").write_bytes(csv_bytes(bad))
    cfg = make_cfg(raw / "*.csv")
    summary = ingest.ingest_urls(store, cfg, ingest.list_batches(cfg)).to_json()
    assert summary["rows_in"] == 3 * 96
    assert summary["rows_validated"] == 2 * 96
    assert summary["rows_quarantined"] == 96
    assert [b["status"] for b in summary["batches"]] == ["validated", "validated", "quarantined"]
    assert {"source", "status", "rows", "reason"} <= set(summary["batches"][0])
    assert "2026-01-09.csv: column 'a' failed rule 'not null'" in summary["batches"][2]["reason"]
    json.dumps(summary, allow_nan=False)
