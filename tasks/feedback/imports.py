"""Incident exports (CSV from a ticketing system) as labels: columns mapped in `[feedback]`.

The whole file is parsed and checked before the one commit: a malformed row stops the
import with the row and field named, and nothing of the file is written. Each row's
idempotency key hashes its mapped values (with the ticket id when one is mapped), so
re-importing the same export, or an overlapping later one, adds only the new rows.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from schemas.config import VERDICTS, DatasetConfig
from tasks.feedback.labels import MAX_ERRORS, LabelError, LabelsWritten, as_requests, record_labels
from tasks.store import Store


def read_incidents(cfg: DatasetConfig, path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The export's rows as label fields (still unchecked), and how errors name each row."""
    columns = cfg.feedback.import_columns
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise LabelError(f"{path}: not a readable CSV file: {str(err).splitlines()[0]}") from None
    mapping = {field: column for field, column in columns.model_dump().items() if column}
    # The optional `note` column may be absent unless the config names it explicitly.
    if "note" not in columns.model_fields_set and mapping.get("note") not in frame.columns:
        mapping.pop("note", None)
    missing = sorted({c for c in mapping.values() if c not in frame.columns})
    if missing:
        raise LabelError(f"{path}: column(s) {missing} missing (mapped in [feedback."
                         f"import_columns]); the file has {frame.columns}")
    if frame.height == 0:
        raise LabelError(f"{path}: no incident rows")
    rows, where, problems = [], [], []
    for number, raw in enumerate(frame.iter_rows(named=True), start=1):
        place = f"{path} row {number}"
        try:
            rows.append(_label_fields(cfg, {f: raw[c] for f, c in mapping.items()}, place))
            where.append(place)
        except LabelError as err:
            problems.append(str(err))
    if problems:
        raise LabelError(f"nothing imported, {len(problems)} bad row(s): "
                         + "; ".join(problems[:MAX_ERRORS]))
    return rows, where


def _label_fields(cfg: DatasetConfig, values: dict[str, Any], place: str) -> dict[str, Any]:
    """One row's values mapped onto LabelRequest fields (times parsed, verdict translated)."""
    fields = {k: v for k, v in values.items() if k != "id" and v not in (None, "")}
    raw_verdict = str(values.get("verdict") or "").strip()
    fields["verdict"] = cfg.feedback.import_verdicts.get(raw_verdict, raw_verdict)
    if fields["verdict"] not in VERDICTS:
        known = sorted({*VERDICTS, *cfg.feedback.import_verdicts})
        raise LabelError(f"{place}: field 'verdict' (column "
                         f"{cfg.feedback.import_columns.verdict!r}): {raw_verdict!r} is not one of "
                         f"{known} (map others in [feedback.import_verdicts])")
    fmt = cfg.feedback.import_time_format
    for field in ("start", "end"):
        text = str(values.get(field) or "").strip()
        try:
            fields[field] = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
        except ValueError:
            column = getattr(cfg.feedback.import_columns, field)
            raise LabelError(f"{place}: field '{field}' (column {column!r}): {text!r} is not a "
                             f"time ({fmt or 'ISO 8601'})") from None
    fields["key"] = hashlib.sha256(json.dumps(values, sort_keys=True, default=str)
                                   .encode()).hexdigest()
    return fields


def import_labels(cfg: DatasetConfig, path: str | Path, store: Store | None = None) -> LabelsWritten:
    """Check every row of an incident export, then record them all in one commit."""
    rows, where = read_incidents(cfg, path)
    return record_labels(cfg, as_requests(rows, where), "import", where, store)
