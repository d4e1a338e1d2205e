"""Shared test setup, kept small and generic.

Environment first: GX and Prefect read these at import time, and a test run
must neither phone home nor touch the developer's ~/.prefect database.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker its own Prefect database
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="nightowl-prefect-home-")
else:
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="nightowl-prefect-home-"))

import pytest

from tasks.store import Store

SERVICE_FIXTURES = {"s3_url"}
"""Fixtures that start a real service (`s3_url` below): a test that requests one, directly
or through another fixture, is an `integration` test."""


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tiers of pyproject's markers: a test on a real S3 endpoint is `integration` by its
    fixture, one that starts a `prefect server` is marked so by hand; every other test is `unit`."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.unit)

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


@pytest.fixture(scope="module")
def s3_url(request):
    """A real S3 endpoint (moto's server on 127.0.0.1) with the module's versioned `BUCKET`,
    shared by the module's tests; the environment points at it while they run."""
    from tests.s3_server import s3_endpoint

    with s3_endpoint(request.module.BUCKET) as url:
        yield url
