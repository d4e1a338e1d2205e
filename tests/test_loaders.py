"""Loaders on the real public files in ../shared/data, and on malformed copies in tmp_path."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.io

from schemas.config import DatasetConfig
from tasks.data import public_data as ld
from tasks.evaluation.metrics import interpretation_mask
from tests.shared_data import DATA, needs_data


def _frame(report: ld.LoadReport) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in report.files]).sort(["entity", "timestamp"])


def _check_splits(cfg: DatasetConfig, frame: pl.DataFrame) -> dict[str, int]:
    """Every row falls in exactly one split, and validation and score both hold anomalies."""
    sp = cfg.splits
    ranges = {"train": sp.train, "validation": sp.validation[0], "score": sp.score}
    positives, covered = {}, 0
    for part, r in ranges.items():
        sel = frame.filter((pl.col("timestamp") >= r.start) & (pl.col("timestamp") < r.end))
        covered += sel.height
        positives[part] = int(sel["label"].sum())
    assert covered == frame.height
    assert positives["validation"] > 0 and positives["score"] > 0
    return positives


def _check_common(cfg: DatasetConfig, report: ld.LoadReport, out: Path) -> pl.DataFrame:
    assert [f.name for f in cfg.families] == ["dense_ae"]
    assert cfg.store.root == f"file://{out.resolve() / 'store'}"
    assert all(
        Path(f).is_file() and Path(f).parent.parent == out.resolve() / "raw" for f in report.files
    )
    frame = _frame(report)
    assert frame.columns == ["timestamp", "entity", *cfg.columns.features, "label"]
    assert frame.select(pl.struct("entity", "timestamp").is_unique().all()).item()
    assert _check_splits(cfg, frame) == {
        k: report.positives[k] for k in ("train", "validation", "score")
    }
    return frame


@needs_data
def test_nab_all_series(tmp_path):
    root = DATA / "nab"
    names = ld.discover_nab(root)
    assert names == [
        "realAWSCloudwatch/ec2_cpu_utilization_825cc2",
        "realKnownCause/machine_temperature_system_failure",
        "realKnownCause/nyc_taxi",
    ]
    shares = {
        "ec2_cpu_utilization_825cc2": 0.0851,
        "machine_temperature_system_failure": 0.0999,
        "nyc_taxi": 0.1003,
    }
    for name in names:
        cfg, report = ld.load_nab(root, name, tmp_path)
        frame = _check_common(cfg, report, tmp_path)
        stem = name.split("/")[-1]
        assert frame["entity"].unique().to_list() == [stem] and cfg.columns.features == ["value"]
        assert frame["label"].mean() == pytest.approx(shares[stem], abs=6e-4)
        assert report.rows["train"] == int(sum(report.rows.values()) * 0.15)
        if stem == "machine_temperature_system_failure":
            assert report.dropped_duplicates == 12 and frame.height == 22695 - 12


@needs_data
def test_smd_machine(tmp_path):
    root = DATA / "smd"
    assert ld.discover_smd(root) == ["machine-2-1"]
    cfg, report = ld.load_smd(root, "machine-2-1", tmp_path)
    frame = _check_common(cfg, report, tmp_path)
    assert cfg.columns.features == [f"m{j:02d}" for j in range(1, 39)]
    assert frame.height == 23693 + 23694 and int(frame["label"].sum()) == 1170
    assert report.rows["train"] == 23693 and report.positives["train"] == 0
    steps = frame["timestamp"].diff().drop_nulls().unique().to_list()
    assert steps == [timedelta(minutes=1)]  # 1-minute rows, train then test, no gaps
    assert len(report.interpretation) == 13 and report.interpretation[0].start == 6506
    assert report.interpretation[0].dims == frozenset({22, 24, 31, 34, 35})
    mask = interpretation_mask(
        report.interpretation, frame.height, 38, offset=report.interpretation_offset
    )
    assert mask[23693 + 6506, 22] and not mask[23693 + 6505].any()


@needs_data
def test_odds_cardio(tmp_path):
    root = DATA / "tabular"
    assert ld.discover_odds(root) == ["cardio"]
    cfg, report = ld.load_odds(root, "cardio", tmp_path)
    frame = _check_common(cfg, report, tmp_path)
    assert cfg.window.length == 1 and frame["entity"].unique().to_list() == ["table"]
    assert frame.height == 1831 and int(frame["label"].sum()) == 176
    assert report.positives["train"] == 0
    assert abs(report.positives["validation"] - report.positives["score"]) <= 1
    _, report2 = ld.load_odds(root, "cardio", tmp_path / "again")
    assert _frame(report2).drop("timestamp").equals(frame.drop("timestamp"))  # seeded


def test_generic_table(tmp_path):
    n = 400
    ts = pl.datetime_range(
        pl.datetime(2025, 1, 1),
        pl.datetime(2025, 1, 1) + pl.duration(minutes=5 * (n - 1)),
        "5m",
        eager=True,
    )
    label = np.zeros(n, dtype=int)
    label[[250, 251, 330, 331, 332]] = 1
    src = tmp_path / "src"
    src.mkdir()
    frame = pl.DataFrame(
        {"time": ts, "a": np.arange(n, dtype=float), "b": np.ones(n), "is_bad": label}
    )
    frame.write_csv(src / "plant.csv")
    frame.write_parquet(src / "plant.parquet")
    assert ld.discover_table(src) == ["plant.csv", "plant.parquet"]
    for name in ("plant.csv", "plant.parquet"):
        cfg, report = ld.load_table(src, name, tmp_path / name, timestamp="time", label="is_bad")
        out = _check_common(cfg, report, tmp_path / name)
        assert cfg.columns.features == ["a", "b"] and out["entity"].unique().to_list() == ["plant"]
    # The parse reads only; the raw files are written by the shared tail, from the parsed set.
    before = sorted(tmp_path.rglob("*"))
    parsed = ld.parse_table(src, "plant.csv", timestamp="time", label="is_bad")
    assert sorted(tmp_path.rglob("*")) == before
    assert (parsed.name, parsed.frame.height, parsed.features) == ("table-plant", n, ("a", "b"))
    cfg, report = ld.write_set(parsed, tmp_path / "tail")
    assert report.rows == {"train": 200, "validation": report.rows["validation"],
                           "score": n - 200 - report.rows["validation"]}
    assert sum(report.positives.values()) == int(label.sum())
    assert _frame(report).equals(parsed.frame.sort(["entity", "timestamp"]))


# -- malformed copies -------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@needs_data
def test_smd_malformed_token_names_file_and_line(tmp_path):
    root = tmp_path / "smd"
    for sub in ("train", "test", "test_label", "interpretation_label"):
        (root / sub).mkdir(parents=True)
        shutil.copy(DATA / "smd" / sub / "machine-2-1.txt", root / sub / "machine-2-1.txt")
    test = root / "test" / "machine-2-1.txt"
    lines = _lines(test)
    tokens = lines[1233].rstrip("\n").split(",")
    tokens[4] = "1.2.3"
    lines[1233] = ",".join(tokens) + "\n"
    test.write_text("".join(lines))
    with pytest.raises(
        ValueError, match=r"test/machine-2-1\.txt: line 1234, column 5: non-numeric token '1\.2\.3'"
    ):
        ld.load_smd(root, "machine-2-1", tmp_path / "out")

    lines[1233] = ",".join(tokens[:-1]) + "\n"  # a short row
    test.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"line 1234: 37 fields, expected 38"):
        ld.load_smd(root, "machine-2-1", tmp_path / "out")

    shutil.copy(DATA / "smd" / "test" / "machine-2-1.txt", test)
    label = root / "test_label" / "machine-2-1.txt"
    lab = _lines(label)
    lab[99] = "2\n"
    label.write_text("".join(lab))
    with pytest.raises(
        ValueError, match=r"test_label/machine-2-1\.txt: line 100: label must be 0 or 1"
    ):
        ld.load_smd(root, "machine-2-1", tmp_path / "out")

    shutil.copy(DATA / "smd" / "test_label" / "machine-2-1.txt", label)
    interp = root / "interpretation_label" / "machine-2-1.txt"
    interp.write_text(interp.read_text() + "garbage\n")
    with pytest.raises(ValueError, match=r"interpretation_label/machine-2-1\.txt: line 14"):
        ld.load_smd(root, "machine-2-1", tmp_path / "out")

    (root / "test_label" / "machine-2-1.txt").unlink()
    assert ld.discover_smd(root) == []


@needs_data
def test_nab_malformed_names_file_and_line(tmp_path):
    root = tmp_path / "nab"
    shutil.copytree(DATA / "nab" / "data", root / "data")
    shutil.copytree(DATA / "nab" / "labels", root / "labels")
    path = root / "data" / "realKnownCause" / "nyc_taxi.csv"
    lines = _lines(path)
    lines[500] = "2014-07-11 09:30:00,lots\n"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"nyc_taxi\.csv: line 501: column 'value'.*'lots'"):
        ld.load_nab(root, "nyc_taxi", tmp_path / "out")
    lines[500] = "yesterday,10\n"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"nyc_taxi\.csv: line 501: column 'timestamp'"):
        ld.load_nab(root, "realKnownCause/nyc_taxi.csv", tmp_path / "out")
    labels = root / "labels" / "combined_windows.json"
    labels.write_text(json.dumps({}))
    with pytest.raises(ValueError, match=r"combined_windows\.json: no entry"):
        ld.load_nab(root, "ec2_cpu_utilization_825cc2", tmp_path / "out")


def test_odds_and_table_malformed(tmp_path):
    scipy.io.savemat(
        tmp_path / "bad.mat", {"X": np.ones((5, 2)), "y": np.array([[0], [1], [2], [0], [0]])}
    )
    with pytest.raises(ValueError, match=r"bad\.mat: y must be 0/1"):
        ld.load_odds(tmp_path, "bad", tmp_path / "out")
    (tmp_path / "t.csv").write_text(
        "timestamp,x,label\n2025-01-01 00:00:00,1.0,0\n2025-01-01 00:01:00,oops,0\n"
    )
    with pytest.raises(ValueError, match=r"t\.csv: line 3: column 'x'.*'oops'"):
        ld.load_table(tmp_path, "t.csv", tmp_path / "out")
