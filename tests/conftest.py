"""Shared test setup, kept small and generic.

Environment first: GX and Prefect read these at import time, and a test run
must neither phone home nor touch the developer's ~/.prefect database.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="nightowl-prefect-home-"))

import pytest

from tasks.store import Store


@pytest.fixture
def store(tmp_path) -> Store:
    """A fresh local store under the test's tmp_path."""
    return Store(f"file://{tmp_path}/store")


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness (ephemeral API + temporary DB) for the whole session (~7 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
