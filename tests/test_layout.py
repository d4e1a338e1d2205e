"""The house rules of the layout, checked on the import graph (README, "Layout").

Dependencies point one way: flows -> tasks -> (models, schemas). Inside tasks/,
training and nightly never import each other; data and evaluation are the
floor they both stand on; evaluation is pure (no Prefect, no store).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(REPO)} imports {name}"
            for path in modules(folder) for name in sorted(imports_of(path))
            if name.startswith(forbidden)]


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("models", ("tasks", "flows", "prefect", "schemas")),
    ("schemas", ("tasks", "flows", "models", "prefect")),
    ("tasks", ("flows",)),
    ("tasks/training", ("tasks.nightly",)),
    ("tasks/nightly", ("tasks.training",)),
    ("tasks/data", ("tasks.training", "tasks.nightly", "tasks.versions", "tasks.scoring")),
    ("tasks/evaluation", ("tasks.training", "tasks.nightly", "tasks.data", "tasks.versions",
                          "tasks.scoring", "tasks.store", "tasks.common", "prefect")),
])
def test_dependencies_point_one_way(folder: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(folder, forbidden) == []


def test_every_stage_module_lives_in_a_room() -> None:
    shared = {"__init__.py", "common.py", "store.py", "versions.py", "scoring.py", "ui.py"}
    top = {p.name for p in (REPO / "tasks").glob("*.py")}
    assert top == shared, "a new stage belongs in tasks/data, training, nightly or evaluation"
