"""Great Expectations suites derived from a dataset config (GX Core 1.x).

Why derived, not hand-written: the TOML config is the single source of truth for
the data contract; the suite is a pure function of it, and the copy committed in
schemas/suites/<name>.json is checked against a fresh build in the tests, so the
two never drift apart.

Regenerate the committed copy with:

    python -m schemas.suites schemas/datasets/synthetic.toml
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.config import DatasetConfig, load_config

# GX phones home on import unless told not to; set before the (lazy) import.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

if TYPE_CHECKING:  # pragma: no cover
    import great_expectations as gx

# GX has no per-group expectation, so "timestamps strictly increasing per entity"
# is checked on this derived column: the timestamp difference to the previous row
# of the same entity, in seconds (null on an entity's first row). The ingest
# stage computes it in polars before validation.
STEP_COLUMN = "__ts_step_seconds"

# Largest finite float64: bounds of ±this reject ±inf while accepting every real value.
FLOAT_MAX = 1.7976931348623157e308

# pandas dtype names a numeric feature may have after `polars.DataFrame.to_pandas()`.
NUMERIC_PANDAS_TYPES = [
    "float64", "float32", "float16",
    "int64", "int32", "int16", "int8",
    "uint64", "uint32", "uint16", "uint8",
    "Float64", "Float32", "Int64", "Int32", "Int16", "Int8",
    "UInt64", "UInt32", "UInt16", "UInt8",
]  # fmt: skip
DATETIME_PANDAS_TYPES = ["datetime64[us]", "datetime64[ns]", "datetime64[ms]", "datetime64[s]"]

SUITE_DIR = Path(__file__).with_name("suites")

_GX_LOCK = threading.RLock()
_CONTEXT: Any = None


def _gx() -> Any:
    """Import GX lazily: it costs ~2 s, and config-only users (CLI, tests) should not pay it."""
    import great_expectations as gx

    return gx


def get_context() -> Any:
    """One ephemeral GX context per process (creating it and importing GX is not free)."""
    global _CONTEXT
    with _GX_LOCK:
        if _CONTEXT is None:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context = _gx().get_context(mode="ephemeral")
            # tqdm bars per validation would flood Prefect's task logs.
            context.variables.progress_bars = ProgressBarsConfig(
                globally=False, metric_calculations=False
            )
            _CONTEXT = context
        return _CONTEXT


def suite_name(cfg: DatasetConfig) -> str:
    return f"nightowl.{cfg.name}"


def feature_bounds(cfg: DatasetConfig, feature: str) -> tuple[float, float]:
    """The [min, max] a feature must lie in: per-feature override, else global, else ±FLOAT_MAX."""
    rules = cfg.validation
    if feature in rules.feature_bounds:
        lo, hi = rules.feature_bounds[feature]
    else:
        lo, hi = rules.value_min, rules.value_max
    return (
        float(lo) if lo is not None else -FLOAT_MAX,
        float(hi) if hi is not None else FLOAT_MAX,
    )


def _bounds_rule(lo: float, hi: float) -> str:
    if lo == -FLOAT_MAX and hi == FLOAT_MAX:
        return "finite value"
    def show(v):
        return "-max" if v == -FLOAT_MAX else "max" if v == FLOAT_MAX else f"{v:g}"
    return f"finite value in [{show(lo)}, {show(hi)}]"


def build_suite(cfg: DatasetConfig) -> gx.ExpectationSuite:
    """The expectation suite for one dataset, from its config alone.

    Every expectation carries meta={"rule": <short human rule>, "column": <raw column>}
    so a failure can be reported as "column X failed rule Y" without knowing GX internals.
    """
    gx = _gx()
    get_context()  # GX 1.x needs an active context even to assemble a suite
    E = gx.expectations
    cols = cfg.columns
    rules = cfg.validation
    ts = cols.timestamp
    suite = gx.ExpectationSuite(name=suite_name(cfg))

    def add(expectation: Any) -> None:
        suite.add_expectation(expectation)

    def meta(rule: str, column: str | None = None) -> dict[str, Any]:
        return {"rule": rule, "column": column} if column else {"rule": rule}

    configured = [ts, *([cols.entity] if cols.entity else []), *cols.features]
    configured += [cols.label] if cols.label else []
    for column in configured:
        add(E.ExpectColumnToExist(column=column, meta=meta("column exists", column)))

    add(
        E.ExpectTableRowCountToBeBetween(
            min_value=rules.min_rows,
            max_value=None,
            meta=meta(f"at least {rules.min_rows} row{'s' if rules.min_rows != 1 else ''}"),
        )
    )

    add(
        E.ExpectColumnValuesToBeInTypeList(
            column=ts, type_list=DATETIME_PANDAS_TYPES, meta=meta("parses as datetime", ts)
        )
    )
    add(E.ExpectColumnValuesToNotBeNull(column=ts, meta=meta("not null", ts)))
    if rules.not_before is not None:
        add(
            E.ExpectColumnValuesToBeBetween(
                column=ts, min_value=rules.not_before, max_value=None,
                meta=meta(f"not before {rules.not_before.isoformat(sep=' ')}", ts),
            )
        )
    if cols.entity:
        add(E.ExpectColumnValuesToNotBeNull(column=cols.entity, meta=meta("not null", cols.entity)))

    for feature in cols.features:
        lo, hi = feature_bounds(cfg, feature)
        add(
            E.ExpectColumnValuesToBeInTypeList(
                column=feature, type_list=NUMERIC_PANDAS_TYPES, meta=meta("numeric", feature)
            )
        )
        add(E.ExpectColumnValuesToNotBeNull(column=feature, meta=meta("not null", feature)))
        add(
            E.ExpectColumnValuesToBeBetween(
                column=feature, min_value=lo, max_value=hi, meta=meta(_bounds_rule(lo, hi), feature)
            )
        )

    if cols.label:
        add(E.ExpectColumnValuesToNotBeNull(column=cols.label, meta=meta("not null", cols.label)))
        add(
            E.ExpectColumnValuesToBeInSet(
                column=cols.label,
                value_set=list(rules.labels),
                meta=meta(f"label in {list(rules.labels)}", cols.label),
            )
        )

    if cols.entity:
        key = [cols.entity, ts]
        add(
            E.ExpectCompoundColumnsToBeUnique(
                column_list=key, meta=meta(f"unique key ({cols.entity}, {ts})")
            )
        )
    else:
        add(E.ExpectColumnValuesToBeUnique(column=ts, meta=meta("unique timestamp", ts)))

    per = f" per {cols.entity}" if cols.entity else ""
    add(
        E.ExpectColumnValuesToBeBetween(
            column=STEP_COLUMN,
            min_value=0,
            max_value=None,  # i.e. +inf; None keeps the suite valid strict JSON
            strict_min=True,
            meta=meta(f"strictly increasing{per}", ts),
        )
    )
    return suite


def suite_to_json(cfg: DatasetConfig) -> dict[str, Any]:
    """A deterministic JSON form of the suite (no random ids, no GX version), for committing."""
    raw = build_suite(cfg).to_json_dict()
    expectations = [
        {"type": e["type"], "kwargs": e["kwargs"], "meta": e.get("meta") or {}}
        for e in raw["expectations"]
    ]
    return {
        "name": raw["name"],
        "meta": {"dataset": cfg.name, "derived_columns": {STEP_COLUMN: _STEP_DOC}},
        "expectations": expectations,
    }


_STEP_DOC = "seconds since the previous row of the same entity (null on its first row)"


def config_key(cfg: DatasetConfig) -> str:
    """A short hash of what the suite is built from (name, columns, validation rules): the
    suite and its GX objects are cached by it, across configs that differ elsewhere."""
    parts = (cfg.name, cfg.columns.model_dump_json(), cfg.validation.model_dump_json())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


_VALIDATIONS: dict[str, Any] = {}


def validation_definition(cfg: DatasetConfig) -> Any:
    """A ValidationDefinition (pandas whole-dataframe batch + suite) cached per config.

    Run it with `.run(batch_parameters={"dataframe": pandas_df})` while holding `gx_lock()`.
    """
    key = config_key(cfg)
    with _GX_LOCK:
        if key in _VALIDATIONS:
            return _VALIDATIONS[key]
        gx = _gx()
        ctx = get_context()
        source = ctx.data_sources.add_pandas(f"nightowl-{cfg.name}-{key}")
        asset = source.add_dataframe_asset(name="frames")
        batch_definition = asset.add_batch_definition_whole_dataframe("whole-frame")
        suite = build_suite(cfg)
        suite.name = f"{suite.name}-{key}"
        suite = ctx.suites.add(suite)
        vd = ctx.validation_definitions.add(
            gx.ValidationDefinition(
                name=f"nightowl-{cfg.name}-{key}", data=batch_definition, suite=suite
            )
        )
        _VALIDATIONS[key] = vd
        return vd


def gx_lock() -> threading.RLock:
    """GX contexts are not documented as thread-safe; Prefect may run tasks in threads."""
    return _GX_LOCK


def expectation_order(vd: Any) -> dict[str, int]:
    """Expectation id -> position in the suite, to report failures in suite order."""
    return {e.id: i for i, e in enumerate(vd.suite.expectations)}


def write_suite_file(cfg: DatasetConfig, directory: Path = SUITE_DIR) -> Path:
    path = Path(directory) / f"{cfg.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_suite(cfg))
    return path


def dump_suite(cfg: DatasetConfig) -> str:
    """The exact text of the committed suite file (stable key order, trailing newline)."""
    return json.dumps(suite_to_json(cfg), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover
    for arg in sys.argv[1:] or [str(Path(__file__).with_name("datasets") / "synthetic.toml")]:
        print(write_suite_file(load_config(arg)))
