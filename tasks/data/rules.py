"""Validation of one parsed batch against the dataset's contract: the GX suite, plus the
sanity rules a static suite cannot hold (the clock, runaway names).

Why two engines for one contract: the Great Expectations suite derived from the config
(schemas/suites.py) is the contract, and GX produces the result a quarantine report
keeps. Running GX on every clean batch costs a pandas copy and a metric pass per
expectation (~5 s for a 368k x 41 night). So every expectation of the suite is first
evaluated here in one polars pass, read from the suite itself (type, kwargs); a batch
on which every expectation holds is valid without GX, and a batch on which any fails
(or whose expectation type this evaluator does not know) goes to GX, which then writes
the reasons and the result. `tests/test_fault_matrix.py` checks that both engines
agree, expectation by expectation, on every bad-input kind.

Every reason is one line naming the file, the column and the rule, at most
`tasks.common.MAX_LINE` characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from schemas import suites
from schemas.config import DatasetConfig
from tasks.common import clip
from tasks.store import finite

MAX_EXAMPLES = 3


@dataclass
class ValidationOutcome:
    """What validation found: `reasons` are one-line, human-readable failures."""

    success: bool
    reasons: list[str]
    result: dict[str, Any]


# -- derived columns -----------------------------------------------------------------


def with_step_column(cfg: DatasetConfig, frame: pl.DataFrame) -> pl.DataFrame:
    """Add `__ts_step_seconds` (diff to the previous row of the same entity, first row null).

    All-null when the timestamp is not a datetime or the entity column is missing:
    those are reported by their own rules, and a second failure would be noise.
    """
    ts, entity = cfg.columns.timestamp, cfg.columns.entity
    usable = ts in frame.columns and isinstance(frame.schema[ts], pl.Datetime)
    usable = usable and (entity is None or entity in frame.columns)
    if not usable:
        return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(suites.STEP_COLUMN))
    step = pl.col(ts).diff().dt.total_microseconds().cast(pl.Float64) / 1e6
    if entity is not None:
        step = step.over(entity)
    return frame.with_columns(step.alias(suites.STEP_COLUMN))


# -- the suite, evaluated in polars ----------------------------------------------------


_SUITES: dict[str, tuple[dict[str, Any], ...]] = {}


def _suite_for(cfg: DatasetConfig) -> tuple[dict[str, Any], ...]:
    """The suite's expectations as plain dicts (the same JSON the committed file holds)."""
    key = suites.config_key(cfg)
    if key not in _SUITES:
        _SUITES[key] = tuple(suites.suite_to_json(cfg)["expectations"])
    return _SUITES[key]


_PANDAS_NAMES = {pl.Float64: "float64", pl.Float32: "float32", pl.Int64: "int64",
                 pl.Int32: "int32", pl.Int16: "int16", pl.Int8: "int8", pl.UInt64: "uint64",
                 pl.UInt32: "uint32", pl.UInt16: "uint16", pl.UInt8: "uint8",
                 pl.Boolean: "bool"}


def pandas_dtype(series: pl.Series) -> str:
    """The dtype name `series.to_pandas()` would have (what GX's type rule looks at)."""
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        return f"datetime64[{dtype.time_unit}]"
    name = _PANDAS_NAMES.get(dtype.base_type())
    if name is None:
        return str(series.head(0).to_pandas().dtype)
    if series.null_count() and dtype.is_integer():
        return "float64"  # pandas has no nulls in a plain int column
    if series.null_count() and dtype == pl.Boolean:
        return "object"
    return name


def _bound(value: Any, dtype: pl.DataType) -> Any:
    if value is None or not isinstance(dtype, pl.Datetime) or not isinstance(value, str):
        return value
    return datetime.fromisoformat(value)


def _violations(e: dict[str, Any], frame: pl.DataFrame) -> pl.Expr | bool:
    """An expression counting the rows that break one expectation, or a known verdict.

    Mirrors GX's pandas semantics: NaN is a missing value; value rules skip missing
    values; `unique` flags every copy of a repeated value.
    """
    kind, kw = e["type"], e["kwargs"]
    column = kw.get("column")
    if kind == "expect_column_to_exist":
        return column in frame.columns
    if kind == "expect_table_row_count_to_be_between":
        lo, hi = kw.get("min_value"), kw.get("max_value")
        return (lo is None or frame.height >= lo) and (hi is None or frame.height <= hi)
    if kind == "expect_compound_columns_to_be_unique":
        cols = list(kw["column_list"])
        if not set(cols) <= set(frame.columns):
            return False
        present = pl.any_horizontal([pl.col(c).is_not_null() for c in cols])
        return (pl.struct(cols).is_duplicated() & present).sum()
    if column not in frame.columns:
        return False
    series, col = frame.get_column(column), pl.col(column)
    dtype = series.dtype
    missing = col.is_null() | (col.is_nan() if dtype.is_float() else pl.lit(False))
    if kind == "expect_column_values_to_be_in_type_list":
        return pandas_dtype(series) in kw["type_list"]
    if kind == "expect_column_values_to_not_be_null":
        return missing.sum()
    if kind == "expect_column_values_to_be_between":
        if not (dtype.is_numeric() or isinstance(dtype, pl.Datetime)):
            return False  # GX raises on these; let it say so
        lo, hi = _bound(kw.get("min_value"), dtype), _bound(kw.get("max_value"), dtype)
        bad = pl.lit(False)
        if lo is not None:
            bad |= (col <= lo) if kw.get("strict_min") else (col < lo)
        if hi is not None:
            bad |= (col >= hi) if kw.get("strict_max") else (col > hi)
        return (bad & ~missing).sum()
    if kind == "expect_column_values_to_be_in_set":
        if not dtype.is_numeric():
            return False
        return (~col.is_in(list(kw["value_set"])) & ~missing).sum()
    if kind == "expect_column_values_to_be_unique":
        return (col.is_duplicated() & ~missing).sum()
    return False  # an expectation this evaluator does not know: GX decides


def suite_verdicts(cfg: DatasetConfig, frame: pl.DataFrame) -> list[bool]:
    """Per expectation of the suite (in order): does it hold on `frame`? One polars pass."""
    checks = [_violations(e, frame) for e in _suite_for(cfg)]
    exprs = {f"e{i}": c for i, c in enumerate(checks) if isinstance(c, pl.Expr)}
    counts = frame.select(**exprs).row(0, named=True) if exprs else {}
    return [counts[f"e{i}"] == 0 if isinstance(c, pl.Expr) else bool(c)
            for i, c in enumerate(checks)]


# -- reasons from a GX result ------------------------------------------------------------


def _raised(res: Any) -> bool:
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return True
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


class _Preformatted(str):
    """An example already written for humans (no quotes added)."""


def _short(value: Any) -> str:
    """A compact example: a key row as (m1, 2026-01-06 13:30:00), anything else as its repr."""
    if isinstance(value, dict):
        text = "(" + ", ".join(str(v) for v in value.values()) + ")"
    elif isinstance(value, _Preformatted):
        text = str(value)
    else:
        text = repr(value)
    return _cut(text)


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _examples(values: list[Any]) -> str:
    shown: list[str] = []
    for v in values:
        text = _short(v)
        if text not in shown:
            shown.append(text)
        if len(shown) == MAX_EXAMPLES:
            break
    return "[" + ", ".join(shown) + "]"


def _type_examples(frame: pl.DataFrame, column: str, want_datetime: bool) -> list[Any]:
    """Values that do not convert to the wanted type (the type rule itself only sees a dtype)."""
    s = frame.get_column(column)
    if s.dtype != pl.String:
        return s.drop_nulls().head(MAX_EXAMPLES).to_list()
    if want_datetime:
        try:
            converted = s.str.to_datetime(time_unit="us", strict=False)
        except pl.exceptions.PolarsError:  # no value looks like a date at all
            converted = pl.Series([None] * s.len(), dtype=pl.Datetime("us"))
    else:
        converted = s.cast(pl.Float64, strict=False)
    return s.filter(converted.is_null() & s.is_not_null()).head(MAX_EXAMPLES).to_list()


def _step_examples(cfg: DatasetConfig, frame: pl.DataFrame) -> list[_Preformatted]:
    """The offending rows of the 'strictly increasing' rule, as entity@timestamp (after prev)."""
    ts, entity = cfg.columns.timestamp, cfg.columns.entity
    prev = pl.col(ts).shift(1)
    if entity is not None:
        prev = prev.over(entity)
    bad = frame.with_columns(prev.alias("__prev")).filter(pl.col(suites.STEP_COLUMN) <= 0)
    out = []
    for row in bad.head(MAX_EXAMPLES).iter_rows(named=True):  # at most 3 rows
        who = f"{_cut(str(row[entity]))}@" if entity is not None else ""
        out.append(_Preformatted(f"{who}{row[ts]} after {row['__prev']}"))
    return out


def _reason(cfg: DatasetConfig, frame: pl.DataFrame, source_name: str, res: Any) -> str:
    """One line: file, column(s), rule, counts and a few unexpected values."""
    conf = res.expectation_config
    meta = conf.meta or {}
    rule = meta.get("rule", conf.type)
    kwargs = conf.kwargs
    if "column_list" in kwargs:
        where = f"columns {list(kwargs['column_list'])}"
    elif meta.get("column") or kwargs.get("column"):
        where = f"column '{meta.get('column') or kwargs.get('column')}'"
    else:
        where = "table"
    r = res.result or {}
    column = kwargs.get("column")
    if _raised(res):
        detail = "could not be evaluated"
    elif conf.type == "expect_column_to_exist":
        found = [_cut(c) for c in frame.columns if c != suites.STEP_COLUMN]
        detail = f"missing; found columns {found[:12]}"
    elif conf.type == "expect_table_row_count_to_be_between":
        detail = f"{r.get('observed_value')} rows"
    elif conf.type == "expect_column_values_to_be_in_type_list":
        examples = _type_examples(frame, column, want_datetime=column == cfg.columns.timestamp)
        detail = f"dtype {r.get('observed_value')}, e.g. {_examples(examples)}"
    else:
        count, total = r.get("unexpected_count"), r.get("element_count")
        examples = r.get("partial_unexpected_list") or []
        if column == suites.STEP_COLUMN:
            examples = _step_examples(cfg, frame)
        detail = f"{count} of {total} rows, e.g. {_examples(examples)}"
    return clip(f"{source_name}: {where} failed rule '{rule}' ({detail})")


def _wanted_columns(cfg: DatasetConfig) -> list[str]:
    cols = cfg.columns
    return [c for c in (cols.timestamp, cols.entity, *cols.features, cols.label) if c]


def validate_with_gx(cfg: DatasetConfig, frame: pl.DataFrame,
                     source_name: str) -> ValidationOutcome:
    """Run the config's GX suite on a frame that has the step column; one reason per failure.

    Failures that are only a consequence of a missing column or a wrong type (GX
    raises on them) are dropped: the 'column exists' / type reason already says it all.
    """
    wanted = _wanted_columns(cfg)
    present = [c for c in wanted if c in frame.columns] + [suites.STEP_COLUMN]
    pdf = frame.select(present).to_pandas()
    vd = suites.validation_definition(cfg)
    with suites.gx_lock():
        result = vd.run(batch_parameters={"dataframe": pdf})
    order = suites.expectation_order(vd)
    missing = set(wanted) - set(frame.columns)
    failed = sorted(
        (res for res in result.results if not res.success),
        key=lambda res: order.get(res.expectation_config.id, 10**6),
    )
    wrong_type = {
        res.expectation_config.kwargs.get("column")
        for res in failed
        if res.expectation_config.type == "expect_column_values_to_be_in_type_list"
    }
    reasons = []
    for res in failed:
        kw = res.expectation_config.kwargs
        cols = set(kw.get("column_list") or [kw.get("column")])
        if _raised(res) and cols & (missing | wrong_type):
            continue
        reasons.append(_reason(cfg, frame, source_name, res))
    return ValidationOutcome(
        success=bool(result.success), reasons=reasons, result=finite(result.to_json_dict())
    )


# -- sanity rules outside the suite ------------------------------------------------------


def sanity_reasons(cfg: DatasetConfig, frame: pl.DataFrame, source_name: str,
                   now: datetime | None = None) -> list[str]:
    """Rules a static suite cannot hold: timestamps later than now + tolerance (a clock or
    unit error upstream, e.g. year 2100), and entity names too long to be names (a
    runaway field must not become a key, a log line or an alert)."""
    reasons = []
    ts, entity = cfg.columns.timestamp, cfg.columns.entity
    if ts in frame.columns and isinstance(frame.schema[ts], pl.Datetime):
        hours = cfg.validation.future_tolerance_hours
        limit = (now or datetime.now(UTC)).replace(tzinfo=None) + timedelta(hours=hours)
        late = frame.get_column(ts).filter(frame.get_column(ts) > limit)
        if late.len():
            examples = _examples([_Preformatted(str(v)) for v in late.head(MAX_EXAMPLES)])
            reasons.append(f"{source_name}: column '{ts}' failed rule 'not after now + {hours:g}h' "
                           f"({late.len()} of {frame.height} rows after {limit:%Y-%m-%d %H:%M} "
                           f"UTC, e.g. {examples})")
    if entity and entity in frame.columns:
        longest = cfg.validation.max_entity_length
        names = frame.get_column(entity).cast(pl.String)
        long = names.filter(names.str.len_chars() > longest)
        if long.len():
            reasons.append(f"{source_name}: column '{entity}' failed rule 'at most {longest} "
                           f"characters' ({long.len()} of {frame.height} rows, e.g. "
                           f"{_examples(long.head(MAX_EXAMPLES).to_list())})")
    return [clip(r) for r in reasons]


# -- both -----------------------------------------------------------------------------------


def validate_frame(cfg: DatasetConfig, frame: pl.DataFrame, source_name: str,
                   now: datetime | None = None) -> ValidationOutcome:
    """The whole contract on one parsed batch: the suite (polars first, GX on failure) and
    the sanity rules a static suite cannot hold."""
    frame = with_step_column(cfg, frame)
    verdicts = suite_verdicts(cfg, frame)
    if all(verdicts):
        outcome = ValidationOutcome(True, [], {"success": True, "engine": "polars",
                                               "expectations": len(verdicts)})
    else:
        outcome = validate_with_gx(cfg, frame, source_name)
    sane = sanity_reasons(cfg, frame, source_name, now)
    if sane:
        outcome = ValidationOutcome(False, outcome.reasons + sane,
                                    {**outcome.result, "success": False, "sanity": sane})
    return outcome
