"""A real `prefect server` subprocess for tests where the server matters, and waiting on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str,
             procs: list[subprocess.Popen]) -> Any:
    """Poll `check` until it returns something truthy; fail early if a process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[:3]} exited with {p.returncode} while waiting for {what}")
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after 15 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def server_env(api: str) -> dict[str, str]:
    """The environment of processes that talk to the server at `api` (fresh PREFECT_HOME)."""
    env = {**os.environ, "PREFECT_HOME": tempfile.mkdtemp(prefix="nightowl-srv-"),
           "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "GX_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_KEY", None)
    return env


RETRYABLE = {429, 502, 503}  # what Prefect's own client retries (prefect.client.base)


class RetryingTransport(httpx.HTTPTransport):
    """Retry the answers the Prefect API marks retryable (503 on a locked SQLite database under
    load), with backoff, as `PrefectClient` does: a raw client would fail a test on them."""

    def __init__(self, attempts: int = 6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attempts = attempts

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.attempts):
            response = super().handle_request(request)
            if response.status_code not in RETRYABLE or attempt == self.attempts - 1:
                return response
            response.read()
            response.close()
            time.sleep(min(2 ** attempt * 0.25, 4.0))
        raise AssertionError("unreachable")


class Server:
    """A started `prefect server` and the processes a test starts beside it (all logged)."""

    def __init__(self, root: Path) -> None:
        from tests.s3_server import free_port

        self.root, self.logs = root, root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = server_env(self.api)
        self.env["PREFECT_UI_API_URL"] = self.api  # a browser on the UI calls this port
        self.procs: list[subprocess.Popen] = []
        self.client = httpx.Client(base_url=self.api, timeout=10, transport=RetryingTransport())

    def start(self, name: str, *args: str) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the process holds it open
        proc = subprocess.Popen(list(args), env=self.env, cwd=self.root, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@contextmanager
def running_server(root: Path, startup_s: float = 120) -> Iterator[Server]:
    """`prefect server start` on a free port with a fresh PREFECT_HOME; stopped (with every
    process started through it) on exit."""
    server = Server(root)
    try:
        server.start("server", str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                     "--port", str(server.port))
        wait_for(lambda: server.client.get("/health").status_code == 200, startup_s,
                 "server health", server.procs)
        yield server
    finally:
        server.client.close()
        for proc in reversed(server.procs):
            stop(proc)


def every_record(client: httpx.Client, path: str) -> list[dict]:
    """Every record of a `POST /<kind>/filter` endpoint of the Prefect API, page by page."""
    found: list[dict] = []
    offset = 0
    while True:
        page = client.post(path, json={"limit": 200, "offset": offset}).json()
        found += page
        if len(page) < 200:
            return found
        offset += 200
