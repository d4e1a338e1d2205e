"""Slow checks, kept out of `make test` and run by `make test-all`: the README's main job on a
fresh Prefect home, and every benchmark script in its quick mode (so none rots unseen)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.shared_data import needs_data

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def test_demo_runs_on_a_fresh_prefect_home(tmp_path):
    """`make demo` on a new machine: an empty PREFECT_HOME (database migrations on first start)."""
    env = {**os.environ, "PREFECT_HOME": tempfile.mkdtemp(prefix="nightowl-fresh-")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([str(BIN / "nightowl"), "demo"], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("nightowl demo"):]
    assert "quarantined: 2026-01-25-resend.csv: column 's01' failed rule 'not null'" in summary
    assert "champion: " in summary and "nightly scoring: 4 nights, 4608 rows" in summary
    assert (tmp_path / ".nightowl" / "store" / "models" / "synthetic" / "CHAMPION.json").is_file()


@needs_data  # the SMD detection and dev benchmarks read ../shared/data
def test_every_benchmark_runs_in_quick_mode():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick"],
                          cwd=REPO, text=True, capture_output=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "FAILED" not in done.stdout
