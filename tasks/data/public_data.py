"""Turn public labelled data sets into nightowl's raw input, plus a config that points at it.

Why: the pipeline only knows one raw layout (timestamp, entity, feature columns,
0/1 label; one file per batch). Each public benchmark has its own layout and
quirks, so each gets a parser that turns it into that layout and chooses the splits
so that validation AND the held-out score part both contain labelled anomalies.
Everything after the parse is one shared tail (``write_set``): the raw files are
written in their own step (``write_raw``: daily batches under
``out_dir/raw/<dataset>/``), then the validated ``DatasetConfig`` (store under
``out_dir/store``) and the ``LoadReport`` are built from the parsed set.

Every kind: ``discover_<kind>(root) -> list[str]``, ``parse_<kind>(root, name) ->
ParsedSet`` (reads, never writes) and ``load_<kind>(root, name, out_dir) ->
(DatasetConfig, LoadReport)`` (parse, then the tail). Malformed input raises
ValueError naming the file and, for text formats, the line.

Split rule shared by the time-series loaders (``choose_boundary``): the
train/validation cut is a fixed row fraction (NAB's 15% probation; SMD's train
file); the validation/score cut is the admissible row closest to a target
fraction, where admissible means both sides hold at least one labelled row and
the cut does not split a label segment. When only one segment is available the
cut goes through its middle (both parts then hold half of it); with no labels
at all the target is used as is, with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from schemas.config import DatasetConfig, parse_config
from tasks.evaluation.metrics import InterpretationSegment, parse_interpretation_labels

log = logging.getLogger(__name__)

SYNTHETIC_START = datetime(2024, 1, 1)
"""Fixed first timestamp for data without a clock (SMD, ODDS): reruns give identical files."""

NAB_TRAIN_FRACTION = 0.15  # NAB's probationary period
NAB_VALIDATION_TARGET = 0.50  # validation ends near the middle of the series
SMD_VALIDATION_FRACTION = 0.50  # of the test file: 4 labelled events for selection, 9 held out
SMD_WINDOW = 32
SMD_SCALING = "standard"
"""SMD/ASD scaling, chosen on validation PR-AUC across the 7 SMD-format dev series (machine-2-1,
ASD omi-1..6; issue 10, benchmarks/results/ablation.md): these files are min-max scaled to [0, 1]
by their authors, so many metrics are near-constant in train. Robust scaling divides them by a
tiny (nonzero) IQR: machine-2-1's test values reach |x| = 3,730 against 733 under standard
scaling, and a few near-constant metrics dominate the error. Standard won validation PR-AUC for
dense_ae, usad and pca on SMD+ASD (e.g. dense_ae 0.587 vs 0.490 under the mean_window rule). The
former robust default was chosen on machine-2-1's four validation events alone; robust stays
available (`[scaling] method`)."""
Format = Literal["parquet", "csv"]


@dataclass(frozen=True)
class LoadReport:
    """What a loader wrote and how it split the rows (also what HitRate needs for SMD)."""

    dataset: str
    files: tuple[str, ...]
    rows: dict[str, int]
    positives: dict[str, int]
    dropped_duplicates: int = 0
    interpretation: tuple[InterpretationSegment, ...] = ()
    interpretation_offset: int = 0
    """Row of the loaded series where interpretation segment row 0 lies (SMD: train rows)."""
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ParsedSet:
    """A public data set in the raw layout with its split cuts; nothing written yet."""

    name: str
    frame: pl.DataFrame
    """Rows in the raw layout (timestamp, entity, features..., label)."""
    features: tuple[str, ...]
    timeline: np.ndarray
    """Sorted distinct timestamps (datetime64[us]) that the cuts index."""
    train_end: int
    val_end: int
    window: int
    origin: str
    scaling: str = "standard"
    dropped_duplicates: int = 0
    interpretation: tuple[InterpretationSegment, ...] = ()
    interpretation_offset: int = 0
    notes: tuple[str, ...] = ()


# -- shared helpers ---------------------------------------------------------------------


def dataset_name(*parts: str) -> str:
    """A config-safe dataset name (lowercase, [a-z0-9_-])."""
    name = "-".join(re.sub(r"[^a-z0-9_-]+", "-", p.lower()).strip("-_") for p in parts if p)
    return name or "dataset"


def choose_boundary(labels: np.ndarray, lo: int, hi: int, target: int) -> int:
    """Cut row b in (lo, hi) for [lo, b) | [b, hi): both sides labelled, no segment split.

    Candidates are vectorised: every b with a positive row on each side and
    without labels[b-1] == labels[b] == 1; the one closest to ``target`` wins.
    Fallbacks are described in the module docstring.
    """
    y = np.asarray(labels[lo:hi]).astype(np.int64)
    n = y.size
    if n < 2:
        raise ValueError(f"cannot split {n} rows into validation and score parts")
    target = min(max(target, lo + 1), hi - 1)
    cum = np.cumsum(y)
    total = int(cum[-1])
    if total == 0:
        log.warning(
            "no labelled rows after training: validation/score cut at the target row %d", target
        )
        return target
    b = np.arange(1, n)  # relative cut positions
    before = cum[b - 1]
    admissible = (before > 0) & (before < total) & ~((y[b - 1] == 1) & (y[b] == 1))
    if admissible.any():
        cand = b[admissible] + lo
        return int(cand[np.argmin(np.abs(cand - target))])
    if total >= 2:  # a single segment: cut through its middle
        pos = np.flatnonzero(y)
        cut = lo + (int(pos[0]) + int(pos[-1]) + 1) // 2
        log.warning(
            "only one labelled segment after training: validation/score cut splits it at row %d",
            cut,
        )
        return cut
    log.warning("a single labelled row after training: the score part gets no labelled anomaly")
    return lo + int(np.flatnonzero(y)[0]) + 1


def _splits(ts: np.ndarray, train_end: int, val_end: int) -> dict[str, Any]:
    """Half-open time ranges from row cuts on a sorted, unique timeline."""
    if not 0 < train_end < val_end < ts.size:
        raise ValueError(
            f"invalid split rows train_end={train_end}, validation_end={val_end}, n={ts.size}"
        )
    step = np.median(np.diff(ts)) if ts.size > 1 else np.timedelta64(1, "m")
    def as_dt(v):
        return v.astype("datetime64[us]").item()
    return {
        "train": {"start": as_dt(ts[0]), "end": as_dt(ts[train_end])},
        "validation": [{"start": as_dt(ts[train_end]), "end": as_dt(ts[val_end])}],
        "score": {"start": as_dt(ts[val_end]), "end": as_dt(ts[-1] + step)},
    }


def _count(parsed: ParsedSet) -> tuple[dict[str, int], dict[str, int]]:
    """Rows and labelled rows per split (every entity's rows, cut at the timeline's cuts)."""
    ts = pl.col("timestamp")
    train_end, val_end = (parsed.timeline[i].astype("datetime64[us]").item()
                          for i in (parsed.train_end, parsed.val_end))
    parts = {"train": ts < train_end, "validation": (ts >= train_end) & (ts < val_end),
             "score": ts >= val_end}
    counted = parsed.frame.select(
        *(c.sum().alias(f"rows_{k}") for k, c in parts.items()),
        *(pl.col("label").filter(c).sum().alias(f"pos_{k}") for k, c in parts.items()))
    row = counted.row(0, named=True)
    return ({k: int(row[f"rows_{k}"]) for k in parts}, {k: int(row[f"pos_{k}"]) for k in parts})


def write_raw(frame: pl.DataFrame, directory: Path, fmt: Format) -> list[str]:
    """One file per calendar day (all entities), as a nightly feed delivers them."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(f"*.{fmt}"):  # a rerun replaces, never mixes, batches
        old.unlink()
    written = []
    by_day = frame.with_columns(pl.col("timestamp").dt.date().alias("_day"))
    for (day,), part in by_day.group_by("_day", maintain_order=True):
        path = directory / f"{day.isoformat()}.{fmt}"
        part = part.drop("_day").sort(["entity", "timestamp"])
        if fmt == "parquet":
            part.write_parquet(path)
        else:
            part.write_csv(path)
        written.append(str(path))
    return sorted(written)


def _config(
    name: str,
    out_dir: Path,
    fmt: Format,
    features: list[str],
    splits: dict[str, Any],
    window: int,
    origin: str,
    scaling: str = "standard",
) -> DatasetConfig:
    out_dir = out_dir.resolve()
    data = {
        "name": name,
        "source": {"path": str(out_dir / "raw" / name / f"*.{fmt}"), "format": fmt},
        "columns": {
            "timestamp": "timestamp",
            "entity": "entity",
            "label": "label",
            "features": features,
        },
        "window": {"length": window, "stride": 1},
        "scaling": {"method": scaling},
        "splits": splits,
        "families": [{"name": "dense_ae"}],
        "store": {"root": f"file://{out_dir / 'store'}"},
    }
    return parse_config(data, origin=origin)


def write_set(parsed: ParsedSet, out_dir: str | Path, fmt: Format = "parquet"
              ) -> tuple[DatasetConfig, LoadReport]:
    """The tail every loader shares: raw files, then the config and report that describe them."""
    out_dir = Path(out_dir)
    files = write_raw(parsed.frame, out_dir / "raw" / parsed.name, fmt)
    splits = _splits(parsed.timeline, parsed.train_end, parsed.val_end)
    cfg = _config(parsed.name, out_dir, fmt, list(parsed.features), splits, parsed.window,
                  parsed.origin, parsed.scaling)
    rows, pos = _count(parsed)
    log.info("%s: %d rows, split rows %s, positives %s", parsed.origin, parsed.frame.height,
             rows, pos)
    return cfg, LoadReport(parsed.name, tuple(files), rows, pos, parsed.dropped_duplicates,
                           parsed.interpretation, parsed.interpretation_offset, parsed.notes)


def _frame(
    ts: np.ndarray, entity: str | np.ndarray, x: np.ndarray, features: list[str], labels: np.ndarray
) -> pl.DataFrame:
    cols: dict[str, Any] = {"timestamp": pl.Series("timestamp", ts.astype("datetime64[us]"))}
    cols["entity"] = pl.Series(
        "entity", np.broadcast_to(np.asarray(entity, dtype=object), ts.shape), dtype=pl.String
    )
    for j, f in enumerate(features):
        cols[f] = pl.Series(f, x[:, j].astype(np.float64))
    cols["label"] = pl.Series("label", labels.astype(np.int8))
    return pl.DataFrame(cols)


def _scan_numeric_lines(path: Path, n_fields: int | None) -> None:
    """Slow path, run only after the fast parser failed: find and name the first bad line."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            tokens = line.rstrip("\r\n").split(",")
            if tokens == [""]:
                raise ValueError(f"{path}: line {number}: empty line")
            if n_fields is None:
                n_fields = len(tokens)
            if len(tokens) != n_fields:
                raise ValueError(
                    f"{path}: line {number}: {len(tokens)} fields, expected {n_fields}"
                )
            for col, tok in enumerate(tokens, start=1):
                try:
                    value = float(tok)
                except ValueError:
                    raise ValueError(
                        f"{path}: line {number}, column {col}: non-numeric token {tok.strip()[:40]!r}"
                    ) from None
                if not math.isfinite(value):
                    raise ValueError(
                        f"{path}: line {number}, column {col}: non-finite value {tok.strip()!r}"
                    )


def read_numeric_text(path: Path, n_fields: int | None = None) -> np.ndarray:
    """A headerless comma-separated float matrix; errors name the file and the line.

    Fast path: numpy's C parser. Anything it rejects, a line-count mismatch (it
    skips blank lines silently) or a non-finite value sends us to a line scan
    that names the first offending line.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    if not data.strip():
        raise ValueError(f"{path}: line 1: file is empty")
    n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    try:
        x = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        _scan_numeric_lines(path, n_fields)
        raise ValueError(f"{path}: could not be parsed as comma-separated floats") from None
    if (
        x.shape[0] != n_lines
        or (n_fields is not None and x.shape[1] != n_fields)
        or not np.isfinite(x).all()
    ):
        _scan_numeric_lines(path, n_fields)
        raise ValueError(f"{path}: inconsistent rows")  # pragma: no cover - the scan names the line
    return x


# -- NAB --------------------------------------------------------------------------------


def discover_nab(root: str | Path) -> list[str]:
    """Series in a NAB checkout, as ``<category>/<stem>`` (the label key without .csv)."""
    data = Path(root) / "data"
    return sorted(p.relative_to(data).with_suffix("").as_posix() for p in data.glob("*/*.csv"))


def _resolve_nab(root: Path, name: str) -> str:
    key = name.removesuffix(".csv")
    found = discover_nab(root)
    if key in found:
        return key
    matches = [f for f in found if f.split("/")[-1] == key]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"NAB series {name!r} not found under {root / 'data'} (or ambiguous): {found}")


def _read_nab_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps datetime64[us], values) of a NAB csv; bad rows name their line."""
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except pl.exceptions.PolarsError as err:
        raise ValueError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    if raw.columns != ["timestamp", "value"]:
        raise ValueError(
            f"{path}: line 1: header must be 'timestamp,value', got {','.join(raw.columns)!r}"
        )
    parsed = raw.select(
        pl.col("timestamp")
        .str.strip_chars()
        .str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us"),
        pl.col("value").str.strip_chars().cast(pl.Float64, strict=False),
    )
    bad_ts = parsed["timestamp"].is_null().to_numpy()
    values = parsed["value"].to_numpy()
    bad_val = ~np.isfinite(values)  # unparsable tokens became null -> NaN
    bad = np.flatnonzero(bad_ts | bad_val)
    if bad.size:
        i = int(bad[0])
        column = "timestamp" if bad_ts[i] else "value"
        raise ValueError(
            f"{path}: line {i + 2}: column '{column}' cannot be parsed: {raw[column][i]!r}"
        )
    return parsed["timestamp"].to_numpy().astype("datetime64[us]"), values


def load_nab(
    root: str | Path, name: str, out_dir: str | Path, *, fmt: Format = "parquet"
) -> tuple[DatasetConfig, LoadReport]:
    """One NAB series written as raw batches (``parse_nab``, then ``write_set``)."""
    return write_set(parse_nab(root, name), out_dir, fmt)


def parse_nab(root: str | Path, name: str) -> ParsedSet:
    """One NAB series with window labels, entity = file stem, feature "value".

    Duplicate timestamps (machine_temperature's clock steps back one hour and
    repeats 12 stamps): the first occurrence is kept, later duplicates are
    dropped and logged, because (entity, timestamp) is the validated key and
    the repeated hour continues the earlier one. Rows out of order after that
    are sorted (logged). Splits: train = first 15% of rows (NAB's probation,
    may hold labels: training drops positive windows); validation/score cut by
    ``choose_boundary`` targeting 50% of the rows.
    """
    root = Path(root)
    key = _resolve_nab(root, name)
    path = root / "data" / f"{key}.csv"
    ts, values = _read_nab_csv(path)
    notes: list[str] = []

    _, first = np.unique(ts, return_index=True)
    dropped = ts.size - first.size
    if dropped:
        keep = np.zeros(ts.size, dtype=bool)
        keep[first] = True
        dup_rows = np.flatnonzero(~keep)
        msg = (
            f"{path}: dropped {dropped} rows with repeated timestamps (kept the first), "
            f"lines {int(dup_rows[0]) + 2}..{int(dup_rows[-1]) + 2}"
        )
        log.warning(msg)
        notes.append(msg)
        ts, values = ts[keep], values[keep]
    if (np.diff(ts) < np.timedelta64(0)).any():
        order = np.argsort(ts, kind="stable")
        ts, values = ts[order], values[order]
        log.warning("%s: timestamps out of order; rows sorted by time", path)
        notes.append(f"{path}: rows sorted by time")

    labels_path = root / "labels" / "combined_windows.json"
    try:
        windows = json.loads(labels_path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{labels_path}: file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{labels_path}: line {err.lineno}: not valid JSON ({err.msg})") from None
    if f"{key}.csv" not in windows:
        raise ValueError(f"{labels_path}: no entry for '{key}.csv'")
    labels = np.zeros(ts.size, dtype=np.int8)
    for pair in windows[f"{key}.csv"]:  # a handful of windows per series
        try:
            start, end = (np.datetime64(datetime.fromisoformat(v), "us") for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"{labels_path}: '{key}.csv': bad window {pair!r}") from None
        labels[(ts >= start) & (ts <= end)] = 1

    n = ts.size
    train_end = int(n * NAB_TRAIN_FRACTION)
    val_end = choose_boundary(labels, train_end, n, int(n * NAB_VALIDATION_TARGET))
    entity = key.split("/")[-1]
    return ParsedSet(dataset_name("nab", entity), _frame(ts, entity, values[:, None], ["value"], labels),
                     ("value",), ts, train_end, val_end, 16, f"load_nab({key})",
                     dropped_duplicates=dropped, notes=tuple(notes))


# -- SMD --------------------------------------------------------------------------------


def discover_smd(root: str | Path) -> list[str]:
    """Machines whose train, test and test_label files all exist."""
    root = Path(root)
    names = {p.stem for p in (root / "train").glob("*.txt")}
    return sorted(
        n
        for n in names
        if (root / "test" / f"{n}.txt").is_file() and (root / "test_label" / f"{n}.txt").is_file()
    )


def load_smd_interpretation(
    root: str | Path, name: str, n_rows: int | None = None, n_dims: int | None = None
) -> list[InterpretationSegment]:
    """Interpretation segments of one machine (rows index its test file); [] if the file is absent."""
    path = Path(root) / "interpretation_label" / f"{name}.txt"
    if not path.is_file():
        return []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        return parse_interpretation_labels(fh, source=str(path), n_rows=n_rows, n_dims=n_dims)


def load_smd(
    root: str | Path, name: str, out_dir: str | Path, *, fmt: Format = "parquet"
) -> tuple[DatasetConfig, LoadReport]:
    """One SMD (or ASD) machine written as raw batches (``parse_smd``, then ``write_set``)."""
    return write_set(parse_smd(root, name), out_dir, fmt)


def parse_smd(root: str | Path, name: str) -> ParsedSet:
    """One SMD machine, features m01..m38, entity = machine name.

    No timestamps in SMD: rows get 1-minute steps from ``SYNTHETIC_START``; the
    test file continues right after train. Train rows are label 0. Splits:
    train = the train file; validation/score cut in the test file by
    ``choose_boundary`` targeting its first half. ``LoadReport.interpretation``
    holds the interpretation_label segments (test-file rows, 0-based dims) and
    ``interpretation_offset`` = number of train rows.
    """
    root = Path(root)
    if name not in discover_smd(root):
        raise ValueError(
            f"SMD machine {name!r} needs train/, test/ and test_label/ files under {root}"
        )
    train = read_numeric_text(root / "train" / f"{name}.txt")
    d = train.shape[1]
    test = read_numeric_text(root / "test" / f"{name}.txt", n_fields=d)
    label_path = root / "test_label" / f"{name}.txt"
    test_labels = read_numeric_text(label_path, n_fields=1)[:, 0]
    if test_labels.size != test.shape[0]:
        raise ValueError(
            f"{label_path}: line {min(test_labels.size, test.shape[0]) + 1}: "
            f"{test_labels.size} labels for {test.shape[0]} test rows"
        )
    bad = np.flatnonzero(~np.isin(test_labels, (0.0, 1.0)))
    if bad.size:
        raise ValueError(
            f"{label_path}: line {int(bad[0]) + 1}: label must be 0 or 1, got {test_labels[bad[0]]}"
        )
    interpretation = load_smd_interpretation(root, name, n_rows=test.shape[0], n_dims=d)

    n_train = train.shape[0]
    x = np.vstack([train, test])
    labels = np.concatenate([np.zeros(n_train, dtype=np.int8), test_labels.astype(np.int8)])
    ts = np.datetime64(SYNTHETIC_START, "us") + np.arange(x.shape[0]) * np.timedelta64(1, "m")
    features = [f"m{j + 1:02d}" for j in range(d)]
    val_end = choose_boundary(
        labels, n_train, x.shape[0], n_train + int(test.shape[0] * SMD_VALIDATION_FRACTION)
    )
    return ParsedSet(dataset_name("smd", name), _frame(ts, name, x, features, labels),
                     tuple(features), ts, n_train, val_end, SMD_WINDOW, f"load_smd({name})",
                     SMD_SCALING, interpretation=tuple(interpretation),
                     interpretation_offset=n_train)


# -- ODDS .mat --------------------------------------------------------------------------


def discover_odds(root: str | Path) -> list[str]:
    """ODDS tables (``*.mat`` stems) below root."""
    return sorted(p.stem for p in Path(root).rglob("*.mat"))


def load_odds(root: str | Path, name: str, out_dir: str | Path, *, fmt: Format = "parquet",
              **options: Any) -> tuple[DatasetConfig, LoadReport]:
    """One ODDS table written as raw batches (``parse_odds(root, name, **options)``, then
    ``write_set``)."""
    return write_set(parse_odds(root, name, **options), out_dir, fmt)


def parse_odds(root: str | Path, name: str, *, seed: int = 0, train_fraction: float = 0.6
               ) -> ParsedSet:
    """One ODDS table as rows with synthetic 1-minute timestamps, entity "table", window 1.

    Split (time ranges need contiguous blocks, so rows are laid out by split):
    after a seeded permutation, train = the first ``train_fraction`` of the
    normal rows (normal only); the remaining normals and all outliers are split
    in halves per class (stratified) into validation and score, each block
    shuffled, then timestamps run train -> validation -> score.
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    root = Path(root)
    paths = [p for p in root.rglob(f"{name}.mat")]
    if len(paths) != 1:
        raise ValueError(
            f"ODDS table {name!r}: expected one {name}.mat under {root}, found {len(paths)}"
        )
    path = paths[0]
    try:
        mat = loadmat(path)
    except (MatReadError, ValueError, TypeError, OSError) as err:
        raise ValueError(f"{path}: not a readable MATLAB file ({err})") from None
    if "X" not in mat or "y" not in mat:
        raise ValueError(
            f"{path}: needs variables 'X' and 'y', found {sorted(k for k in mat if not k.startswith('__'))}"
        )
    x = np.asarray(mat["X"], dtype=np.float64)
    y = np.asarray(mat["y"]).ravel()
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"{path}: X {x.shape} and y {y.shape} do not describe the same rows")
    if not np.isfinite(x).all():
        raise ValueError(
            f"{path}: X row {int(np.flatnonzero(~np.isfinite(x).all(1))[0])} is not finite"
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{path}: y must be 0/1, found {np.unique(y)[:5]}")
    y = y.astype(np.int8)

    rng = np.random.default_rng(seed)
    perm = rng.permutation(y.size)
    normal, outlier = perm[y[perm] == 0], perm[y[perm] == 1]
    n_train = int(normal.size * train_fraction)
    rest_normal = normal[n_train:]
    half_n, half_o = rest_normal.size // 2, (outlier.size + 1) // 2
    validation = rng.permutation(np.concatenate([rest_normal[:half_n], outlier[:half_o]]))
    score = rng.permutation(np.concatenate([rest_normal[half_n:], outlier[half_o:]]))
    order = np.concatenate([normal[:n_train], validation, score])
    x, y = x[order], y[order]
    ts = np.datetime64(SYNTHETIC_START, "us") + np.arange(y.size) * np.timedelta64(1, "m")
    features = [f"x{j + 1:02d}" for j in range(x.shape[1])]
    return ParsedSet(dataset_name("odds", name), _frame(ts, "table", x, features, y),
                     tuple(features), ts, n_train, n_train + validation.size, 1,
                     f"load_odds({name})")


# -- generic CSV / Parquet --------------------------------------------------------------


def discover_table(root: str | Path) -> list[str]:
    """CSV and Parquet files below root, as paths relative to it."""
    root = Path(root)
    found = [p for ext in ("*.csv", "*.parquet", "*.pq") for p in root.rglob(ext)]
    return sorted(p.relative_to(root).as_posix() for p in found)


def _read_table(path: Path) -> tuple[pl.DataFrame, int]:
    """The frame (CSV: all strings, parsed later per column) and the line of its first data row."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pl.read_parquet(path), 0
        return pl.read_csv(path, infer_schema=False), 2
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (pl.exceptions.PolarsError, OSError) as err:
        raise ValueError(f"{path}: not readable ({str(err).splitlines()[0]})") from None


def _where(path: Path, first_line: int, row: int) -> str:
    return f"{path}: line {row + first_line}" if first_line else f"{path}: row {row}"


def load_table(root: str | Path, name: str, out_dir: str | Path, *, fmt: Format = "parquet",
               **options: Any) -> tuple[DatasetConfig, LoadReport]:
    """A CSV/Parquet table written as raw batches (``parse_table(root, name, **options)``,
    then ``write_set``)."""
    return write_set(parse_table(root, name, **options), out_dir, fmt)


def parse_table(
    root: str | Path,
    name: str,
    *,
    timestamp: str | None = "timestamp",
    entity: str | None = "entity",
    label: str = "label",
    features: Sequence[str] | None = None,
    train_fraction: float = 0.5,
    validation_target: float = 0.7,
    window: int = 16,
) -> ParsedSet:
    """A CSV/Parquet table with a 0/1 label column in the pipeline's raw layout.

    Missing timestamp column: rows get 1-minute steps from ``SYNTHETIC_START``.
    Missing entity column: entity = the file stem. Features default to every
    other column. Duplicate (entity, timestamp) keys keep the first row (logged).
    Splits on the timeline of distinct timestamps (a timestamp is positive when
    any entity is): train = first ``train_fraction``, validation/score cut by
    ``choose_boundary`` targeting ``validation_target``.
    """
    path = Path(root) / name
    raw, first_line = _read_table(path)
    if label not in raw.columns:
        raise ValueError(f"{path}: no label column {label!r} (columns: {raw.columns})")
    ts_col = timestamp if timestamp and timestamp in raw.columns else None
    ent_col = entity if entity and entity in raw.columns else None
    feats = (
        list(features)
        if features
        else [c for c in raw.columns if c not in {ts_col, ent_col, label}]
    )
    missing = [f for f in feats if f not in raw.columns]
    if missing or not feats:
        raise ValueError(f"{path}: feature columns missing: {missing or 'none left'}")

    def numeric(col: str) -> np.ndarray:
        series = raw[col]
        cast = (
            series.str.strip_chars().cast(pl.Float64, strict=False)
            if series.dtype == pl.String
            else series.cast(pl.Float64, strict=False)
        )
        values = cast.to_numpy()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{_where(path, first_line, i)}: column '{col}': not a finite number: {series[i]!r}"
            )
        return values

    x = np.column_stack([numeric(f) for f in feats]) if raw.height else np.zeros((0, len(feats)))
    if raw.height == 0:
        raise ValueError(f"{path}: no rows")
    y = numeric(label)
    bad = np.flatnonzero(~np.isin(y, (0.0, 1.0)))
    if bad.size:
        raise ValueError(
            f"{_where(path, first_line, int(bad[0]))}: column '{label}': must be 0 or 1, got {raw[label][int(bad[0])]!r}"
        )
    y = y.astype(np.int8)
    if ts_col is None:
        ts = np.datetime64(SYNTHETIC_START, "us") + np.arange(raw.height) * np.timedelta64(1, "m")
    else:
        series = raw[ts_col]
        parsed = (
            series.str.strip_chars().str.to_datetime(strict=False, time_unit="us")
            if series.dtype == pl.String
            else series.cast(pl.Datetime("us"), strict=False)
        )
        if isinstance(parsed.dtype, pl.Datetime) and parsed.dtype.time_zone:
            parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        bad = np.flatnonzero(parsed.is_null().to_numpy())
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{_where(path, first_line, i)}: column '{ts_col}': not a timestamp: {series[i]!r}"
            )
        ts = parsed.to_numpy().astype("datetime64[us]")
    ents = (
        raw[ent_col].cast(pl.String).fill_null("").to_numpy()
        if ent_col
        else np.full(raw.height, path.stem, dtype=object)
    )

    frame = _frame(ts, ents, x, feats, y)
    n_before = frame.height
    frame = frame.unique(subset=["entity", "timestamp"], keep="first", maintain_order=True).sort(
        ["entity", "timestamp"]
    )
    dropped = n_before - frame.height
    notes: tuple[str, ...] = ()
    if dropped:
        msg = f"{path}: dropped {dropped} rows with a repeated (entity, timestamp) key (kept the first)"
        log.warning(msg)
        notes = (msg,)

    timeline = frame.group_by("timestamp").agg(pl.col("label").max()).sort("timestamp")
    t = timeline["timestamp"].to_numpy().astype("datetime64[us]")
    tl = timeline["label"].to_numpy()
    if t.size < 3:
        raise ValueError(f"{path}: needs at least 3 distinct timestamps to split, has {t.size}")
    train_end = max(1, int(t.size * train_fraction))
    val_end = choose_boundary(tl, train_end, t.size, int(t.size * validation_target))
    ds = dataset_name("table", Path(name).with_suffix("").as_posix().replace("/", "-"))
    return ParsedSet(ds, frame, tuple(feats), t, train_end, val_end, window, f"load_table({name})",
                     dropped_duplicates=dropped, notes=notes)
