"""The house rules of the layout, checked on the import graph (README, "Layout").

Dependencies point one way: flows -> tasks -> models -> schemas (schemas, the settings'
one definition, is the floor: models read their defaults from it). Inside tasks/,
training and nightly never import each other; data and evaluation are the
floor they both stand on; evaluation is pure (no Prefect, no store, no I/O, no torch);
benchmark (the reference detectors of `nightowl benchmark --baselines`) is a leaf that
only flows/benchmark.py imports. A module's name says what it holds: no two rooms hold
a module of the same name. feedback
(operators' labels) stands on data and the store; its review reads what the nightly
path published (alert logs, the night's plot), while the labels table itself
imports neither nightly nor training, so training can read labels without
reaching the nightly path; nightly never imports feedback (labels flow back
through training, not into tonight's scoring).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported(nodes: Iterable[ast.AST]) -> set[str]:
    """The modules these statements import (absolute names)."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file."""
    return imported(ast.walk(ast.parse(path.read_text())))


def modules(folder: str) -> list[Path]:
    """The Python files of a folder (recursively), or the one file named."""
    path = REPO / folder
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(REPO)} imports {name}"
            for path in modules(folder) for name in sorted(imports_of(path))
            if name.startswith(forbidden)]


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("models", ("tasks", "flows", "prefect")),  # schemas: the settings' one definition
    ("schemas", ("tasks", "flows", "models", "prefect")),
    ("tasks", ("flows",)),
    ("tasks/training", ("tasks.nightly",)),
    ("tasks/nightly", ("tasks.training", "tasks.feedback")),
    ("tasks/feedback", ("tasks.training", "tasks.benchmark")),
    ("tasks/feedback/labels.py", ("tasks.nightly", "tasks.training", "tasks.feedback.review")),
    ("tasks/feedback/imports.py", ("tasks.nightly", "tasks.training", "tasks.feedback.review")),
    ("tasks/data", ("tasks.training", "tasks.nightly", "tasks.versions", "tasks.scoring",
                    "tasks.benchmark", "tasks.feedback")),
    ("tasks/evaluation", ("tasks.training", "tasks.nightly", "tasks.data", "tasks.versions",
                          "tasks.scoring", "tasks.store", "tasks.common", "tasks.benchmark",
                          "tasks.feedback", "prefect", "fsspec", "s3fs", "pathlib", "os",
                          "shutil", "tempfile", "torch", "models")),
    ("tasks/benchmark", ("tasks.training", "tasks.nightly", "tasks.versions", "tasks.store",
                         "tasks.common", "prefect")),
    ("flows", ("benchmarks",)),
])
def test_dependencies_point_one_way(folder: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(folder, forbidden) == []


def test_only_the_benchmark_runner_imports_the_benchmark_room() -> None:
    """The reference detectors need torch and the `bench` extra: no stage may load them."""
    users = [f"{path.relative_to(REPO)}" for folder in ("tasks", "flows") for path in modules(folder)
             if not path.is_relative_to(REPO / "tasks" / "benchmark")
             and any(name.startswith("tasks.benchmark") for name in imports_of(path))]
    assert users == ["flows/benchmark.py"]


SAME_NAME_PENDING = {"ensemble.py"}
"""tasks/evaluation/combiners.py and tasks/training/ensemble.py: renamed by issue 17's scoring
half (one scoring path); remove the exception when that lands."""


def test_no_two_rooms_hold_a_module_of_the_same_name() -> None:
    seen: dict[str, list[str]] = {}
    for path in modules("tasks"):
        if path.name != "__init__.py":
            seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    twice = {name: paths for name, paths in seen.items()
             if len(paths) > 1}
    assert twice == {}, "name each module for what it holds"


def test_every_stage_module_lives_in_a_room() -> None:
    shared = {"__init__.py", "common.py", "store.py", "versions.py", "scoring.py", "ui.py"}
    top = {p.name for p in (REPO / "tasks").glob("*.py")}
    assert top == shared, "a new stage belongs in tasks/data, training, nightly, evaluation, feedback or benchmark"


NIGHTLY_PATH = ["flows/nightly.py", "flows/common.py", "flows/cli.py", "flows/runners.py",
                "tasks/ui.py", "tasks/common.py",
                "tasks/store.py", "tasks/versions.py", "tasks/scoring.py", "tasks/nightly",
                "tasks/data", "tasks/feedback", "flows/review.py", "tasks/evaluation/drift_statistics.py", "tasks/evaluation/normalise.py",
                "schemas"]
TRAINING_ONLY = ("torch", "models", "safetensors", "sklearn", "scipy", "matplotlib", "onnx.",
                 "onnxscript")


def module_level_imports(path: Path) -> set[str]:
    """Imports that run when the module loads (not inside functions or TYPE_CHECKING)."""
    return imported(ast.parse(path.read_text()).body)


def test_the_nightly_path_loads_no_training_dependency() -> None:
    """A `nightowl[scoring]` install has no torch, sklearn, scipy or matplotlib: the nightly
    path imports them only inside the functions that need them (the e2e test runs it so)."""
    paths = [p for entry in NIGHTLY_PATH for p in
             ([REPO / entry] if entry.endswith(".py") else modules(entry))]
    bad = [f"{p.relative_to(REPO)} imports {name}" for p in paths
           for name in sorted(module_level_imports(p))
           if name in ("onnx",) or name.startswith(TRAINING_ONLY)]
    assert bad == []
