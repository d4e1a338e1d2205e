"""Run the `nightowl` CLI as the `scoring` install would: only its distributions importable.

    python tests/torchless.py LOADED_JSON nightowl-arguments...

Why: nightly scoring must run on `pip install nightowl[scoring]`, which has no torch
(nor scikit-learn, matplotlib, safetensors, ...). A finder first on sys.meta_path
answers the import of any top-level module that no distribution of that set
provides with ModuleNotFoundError, as such an environment does: a torch import
anywhere on the nightly path fails the run, and optional imports (boto3, ...)
take the path they take there. Afterwards the top-level modules the run loaded
go to LOADED_JSON. The real venv (`make scoring-venv`) is built and used by a
slow test and by benchmarks/onnx_scoring.py.
"""

from __future__ import annotations

import importlib.abc
import json
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement

VENV_OWN = {"pip", "setuptools"}  # every venv has them


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def checkout_requires() -> list[str]:
    """nightowl's requirements as this checkout's pyproject.toml declares them (the installed
    metadata may be an older checkout's), in the Requires-Dist form of installed metadata."""
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    lines = list(project["project"]["dependencies"])
    for extra, reqs in project["project"].get("optional-dependencies", {}).items():
        lines += [f"{r}; extra == '{extra}'" for r in reqs]
    return lines


def scoring_distributions() -> set[str]:
    """Every distribution `pip install nightowl[scoring]` brings: nightowl's requirements
    from the checkout, theirs from installed metadata."""
    seen: set[str] = set()
    todo = [("nightowl", {"scoring"})]
    while todo:
        name, extras = todo.pop()
        for line in (checkout_requires() if name == "nightowl" else requires(name)) or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                continue
            key = canonical(req.name)
            if key not in seen or req.extras:
                seen.add(key)
                todo.append((req.name, set(req.extras)))
    return seen | {"nightowl"} | VENV_OWN


class ScoringInstallOnly(importlib.abc.MetaPathFinder):
    """Modules of distributions outside the scoring set are not installed, as far as this
    process can tell; the standard library and unmapped modules import as usual."""

    def __init__(self, allowed: set[str]) -> None:
        self.owners = packages_distributions()
        self.allowed = allowed

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        top = name.partition(".")[0]
        owners = {canonical(d) for d in self.owners.get(top, [])}
        if top == "torch" or (owners and not owners & self.allowed):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    sys.meta_path.insert(0, ScoringInstallOnly(scoring_distributions()))
    try:
        from flows.cli import app

        app(args, standalone_mode=False)
    finally:
        with open(out, "w") as f:
            json.dump(sorted({name.partition(".")[0] for name, module in sys.modules.items()
                              if module is not None}), f)


if __name__ == "__main__":
    main()
