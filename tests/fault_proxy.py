"""A small fault-injecting HTTP proxy for tests: put it in front of the local S3 server
(tests/s3_server.py) and point the store's endpoint at it.

Every request is forwarded to the upstream as it came; on the requests the plan picks,
a fault happens instead, as object stores and networks really fail:

- "503":          answered 503 SlowDown without forwarding (throttling);
- "reset":        the connection is reset before forwarding (the request never landed);
- "reset-after":  forwarded, then the connection is reset instead of the reply (the
                  write DID land and the client cannot know: a retried conditional
                  PUT then fails its own precondition);
- "stall":        no reply for longer than the client's read timeout, then a reset;
- "409":          answered 409 ConditionalRequestConflict without forwarding (AWS's reply
                  to a conditional write while another one on the key is in flight);
- "ignore-conditions": forwarded without its If-Match / If-None-Match headers, as an older
                  S3-compatible server that does not implement them behaves.

FAULTS are the network faults `every` cycles through by default; the last two are chosen
by name.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("503", "reset", "reset-after", "stall")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
              "te", "trailer"}
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
CONFLICT = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict'
            b"</Code><Message>A conflicting conditional operation is currently in progress "
            b"against this resource. Please try again.</Message></Error>")
CONDITIONS = {"if-match", "if-none-match"}


Plan = Callable[[int, str, str], str | None]  # (request number, method, path) -> fault


def every(n: int, kinds: tuple[str, ...] = FAULTS, stalls: int = 2) -> Plan:
    """A fault on every n-th request, cycling through `kinds` (at most `stalls` stalls: each
    costs a read timeout)."""
    state = {"stalls": 0, "next": 0}
    lock = threading.Lock()

    def plan(number: int, method: str, path: str) -> str | None:
        if number % n:
            return None
        with lock:
            kind = kinds[state["next"] % len(kinds)]
            state["next"] += 1
            if kind == "stall":
                if state["stalls"] >= stalls:
                    kind = "503"
                state["stalls"] += 1
        return kind

    return plan


class FaultProxy:
    """The proxy; `faults` counts what it injected, `requests` what it saw."""

    def __init__(self, upstream: str, plan: Plan, stall_seconds: float = 2.5) -> None:
        self.upstream = urlsplit(upstream)
        self.plan = plan
        self.stall_seconds = stall_seconds
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def _number(self) -> int:
        with self._lock:
            self.requests += 1
            return self.requests

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                """Close with RST, not FIN: the client sees 'connection reset by peer'."""
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _forward(self, body: bytes, dropped_headers: frozenset[str] = frozenset()
                         ) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                  timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in HOP_BY_HOP | dropped_headers}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                conn.close()
                dropped = HOP_BY_HOP | ({"content-length"} if self.command != "HEAD" else set())
                return reply.status, [(k, v) for k, v in reply.getheaders()
                                      if k.lower() not in dropped], data

            def _handle(self) -> None:
                body = self._body()
                fault = proxy.plan(proxy._number(), self.command, self.path)
                if fault:
                    proxy.faults[fault] += 1
                if fault in ("503", "409"):
                    self._reply(int(fault), [("Content-Type", "application/xml")],
                                SLOW_DOWN if fault == "503" else CONFLICT)
                    return
                if fault == "reset":
                    self._reset()
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_seconds)
                    self._reset()
                    return
                ignored = CONDITIONS if fault == "ignore-conditions" else frozenset()
                status, headers, data = self._forward(body, frozenset(ignored))
                if fault == "reset-after":
                    self._reset()
                    return
                self._reply(status, headers, data)

            def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if not any(k.lower() == "content-length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

        return Handler

    def start(self) -> FaultProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def fault_proxy(upstream: str, plan: Plan, stall_seconds: float = 2.5) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, plan, stall_seconds).start()
    try:
        yield proxy
    finally:
        proxy.stop()
