"""Where a champion prior comes from when a scope has no history: the kind of data.

Why: with 1-4 labelled validation events a scope cannot tell ten candidates apart, and the
validation winner was often worse than one family used everywhere (issue 18). nightowl's
own benchmark corpus says which family does best, on VALIDATION rows, per kind of data;
schemas/selection_priors.json ships that ranking with its provenance, and
benchmarks/selection_priors.py regenerates it. Score-split numbers never enter it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any, Literal

from tasks.evaluation.selection import Prior

DataKind = Literal["multivariate", "univariate", "table"]
PRIORS_FILE = "selection_priors.json"


def infer_kind(n_features: int, window: int) -> DataKind:
    """A window of one row is a table; one feature a univariate series; else multivariate."""
    if window == 1:
        return "table"
    return "univariate" if n_features == 1 else "multivariate"


@cache
def shipped_priors() -> dict[str, Any]:
    """schemas/selection_priors.json, as shipped with the package."""
    return json.loads(files("schemas").joinpath(PRIORS_FILE).read_text())


def shipped_prior(kind: DataKind) -> Prior:
    """The benchmark corpus' validation ranking for this kind of data, with its provenance."""
    data = shipped_priors()
    if kind not in data["kinds"]:
        raise ValueError(f"no shipped selection prior for kind {kind!r}; available: "
                         f"{', '.join(sorted(data['kinds']))}")
    entry = data["kinds"][kind]
    return Prior(tuple(entry["ranking"]), f"shipped:{kind}",
                 {**data["provenance"], "series": entry["series"]})


def configured_prior(kind: DataKind, override: str | None) -> Prior:
    """The shipped prior for `kind`, or the family a config names first (its source says so)."""
    shipped = shipped_prior(kind)
    if override is None:
        return shipped
    return Prior((override, *(n for n in shipped.ranking if n != override)), "config",
                 {"family": override, "then": f"shipped:{kind}"})
