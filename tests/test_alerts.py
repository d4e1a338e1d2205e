"""Alerts: one webhook POST per anomalous segment, Slack-compatible, never twice."""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest

from schemas.config import parse_config
from tasks.nightly.alert import AlertDeliveryError, find_segments, send_alerts, slack_message
from tasks.store import Store
from tests.tiny import tiny_config

NIGHT = date(2026, 1, 9)


class Receiver:
    """A local HTTP endpoint on 127.0.0.1 recording every JSON body it accepts.

    Its path is a secret, as a Slack webhook's is; the first `fail_first` POSTs are
    answered 503 (a webhook that fails, then recovers).
    """

    def __init__(self, fail_first: int = 0) -> None:
        bodies = self.bodies = []
        self.failures = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    failing = receiver.failures > 0
                    receiver.failures -= failing
                    if not failing:
                        bodies.append(body)
                self.send_response(503 if failing else 200)
                self.end_headers()
                self.wfile.write(b"busy" if failing else b"ok")

            def log_message(self, *args) -> None:
                pass

        lock = threading.Lock()
        self.secret = f"T0SECRET/B0SECRET/{uuid.uuid4().hex}"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/{self.secret}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def scores(flags: dict[str, list[int]]) -> pl.DataFrame:
    """A scores frame: per entity, 1 = anomalous row (score 10 vs threshold 1), 0 = normal."""
    frames = []
    for entity, bits in flags.items():
        n = len(bits)
        frames.append(pl.DataFrame({
            "timestamp": [datetime(2026, 1, 9) + timedelta(minutes=30 * i) for i in range(n)],
            "entity": [entity] * n,
            "score": [10.0 if b else 0.1 for b in bits],
            "threshold": [1.0] * n,
            "is_anomaly": [bool(b) for b in bits],
            "model_version": ["v1"] * n,
            "contrib__s00": [1.0] * n, "contrib__s01": [8.0 if b else 0.0 for b in bits],
            "contrib__s02": [0.5] * n,
        }))
    return pl.concat(frames)


def test_segments_are_contiguous_runs_per_entity():
    segs = find_segments(scores({"m1": [0, 1, 1, 1, 0, 0, 1, 0], "m2": [1, 1, 0, 0, 0, 0, 0, 1]}),
                         level=1.0)
    assert segs.select("entity", "rows").rows() == [("m1", 3), ("m1", 1), ("m2", 2), ("m2", 1)]
    assert segs["top_features"][0].to_list() == ["s01", "s00", "s02"]


def test_alert_level_and_min_rows_filter_segments():
    frame = scores({"m1": [1, 1, 0, 1]})
    assert find_segments(frame, level=20.0).height == 0  # score 10 < 20 x threshold
    assert find_segments(frame, level=1.0, min_rows=2)["rows"].to_list() == [2]


def test_one_alert_per_segment_and_none_again_on_rerun(tmp_path, receiver):
    cfg = parse_config(tiny_config(tmp_path))
    store = Store(cfg.store.root)
    frame = scores({"m1": [0, 1, 1, 1, 0, 1, 1], "m2": [0, 0, 1, 0, 0, 0, 0]})

    first = send_alerts(store, cfg, NIGHT, frame, receiver.url)
    assert first.sent == 3 and len(receiver.bodies) == 3
    body = receiver.bodies[0]
    assert "m1" in body["text"] and "s01" in body["text"]
    assert body["blocks"][0]["type"] == "section"

    again = send_alerts(store, cfg, NIGHT, frame, receiver.url)  # a rerun of the same night
    assert again.sent == 0 and len(receiver.bodies) == 3
    assert {r["alert"] for r in again.top} == {"duplicate"}
    log = store.read_bytes(first.log).decode().splitlines()
    assert [json.loads(line)["entity"] for line in log] == ["m1", "m1", "m2"]


def test_failed_delivery_is_retried_next_run(tmp_path, receiver):
    cfg = parse_config(tiny_config(tmp_path))
    store = Store(cfg.store.root)
    frame = scores({"m1": [1, 1, 0]})

    with pytest.raises(AlertDeliveryError, match=r"http://127.0.0.1:9/… could not be reached"):
        send_alerts(store, cfg, NIGHT, frame, "http://127.0.0.1:9/unreachable")
    assert store.read_json("alerts/tiny/ledger.json") in (None, {})  # the claim was released
    assert send_alerts(store, cfg, NIGHT, frame, receiver.url).sent == 1


def test_a_failing_webhook_never_leaks_its_url_and_recovers(tmp_path, caplog):
    cfg = parse_config(tiny_config(tmp_path))
    store = Store(cfg.store.root)
    frame = scores({"m1": [1, 1, 0, 1], "m2": [0, 1, 1, 0]})
    hook = Receiver(fail_first=1)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(AlertDeliveryError) as failed:
            send_alerts(store, cfg, NIGHT, frame, hook.url)
        assert "answered HTTP 503" in str(failed.value)
        assert failed.value.__cause__ is None and failed.value.__context__ is None  # no httpx error
        recovered = send_alerts(store, cfg, NIGHT, frame, hook.url)  # the next run (or retry)
        assert recovered.sent == 3 and len(hook.bodies) == 3  # each segment exactly once
        assert send_alerts(store, cfg, NIGHT, frame, hook.url).sent == 0
    finally:
        hook.close()
    written = b"".join(store.read_bytes(k) for k in store.list("")).decode()
    for text in (str(failed.value), repr(failed.value), caplog.text, written):
        assert hook.secret not in text and "SECRET" not in text
    assert "HTTP Request: POST" in caplog.text  # httpx did log, with the URL redacted


def test_concurrent_runs_of_a_night_send_each_segment_once(tmp_path, receiver):
    cfg = parse_config(tiny_config(tmp_path))
    root = cfg.store.root
    frame = scores({f"m{i}": [0, 1, 1, 0, 1] for i in range(6)})  # 12 segments
    barrier = threading.Barrier(3)
    results = []

    def night() -> None:
        barrier.wait()
        results.append(send_alerts(Store(root), cfg, NIGHT, frame, receiver.url).sent)

    threads = [threading.Thread(target=night) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 12 and len(receiver.bodies) == 12
    ids = [b["blocks"][1]["elements"][0]["text"].split("`")[1] for b in receiver.bodies]
    assert len(set(ids)) == 12
    ledger = Store(root).read_json("alerts/tiny/ledger.json")
    assert {e["status"] for e in ledger.values()} == {"sent"}


def test_a_dead_runs_claim_expires_and_a_live_one_is_respected(tmp_path, receiver):
    cfg = parse_config(tiny_config(tmp_path))
    store = Store(cfg.store.root)
    frame = scores({"m1": [1, 0, 1]})
    old = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    now = datetime.now(UTC).isoformat()
    ids = ["m1@2026-01-09T00:00:00", "m1@2026-01-09T01:00:00"]
    store.write_json("alerts/tiny/ledger.json", {
        ids[0]: {"status": "claimed", "claimed_at": old, "night": "2026-01-09", "claim": "dead"},
        ids[1]: {"status": "claimed", "claimed_at": now, "night": "2026-01-09", "claim": "alive"}})
    result = send_alerts(store, cfg, NIGHT, frame, receiver.url)
    assert result.sent == 1 and len(receiver.bodies) == 1
    assert ids[0] in receiver.bodies[0]["text"] or "00:00:00" in receiver.bodies[0]["text"]
    assert [r["alert"] for r in sorted(result.top, key=lambda r: r["start"])] == ["sent", "duplicate"]


def test_a_fresh_claim_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path, receiver):
    """A rerun on the machine that was lost mid-alert must not wait out the lease; a claim
    of a live process here, or of one on another host, is still respected."""
    import socket
    import subprocess
    import sys

    cfg = parse_config(tiny_config(tmp_path))
    store = Store(cfg.store.root)
    frame = scores({"m1": [1, 0, 1, 0, 1]})
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    now = datetime.now(UTC).isoformat()
    here = socket.gethostname()
    ids = [f"m1@2026-01-09T0{h}:00:00" for h in (0, 1, 2)]  # 30-minute rows
    store.write_json("alerts/tiny/ledger.json", {
        ids[0]: {"status": "claimed", "claimed_at": now, "night": "2026-01-09", "claim": "killed",
                 "owner": {"host": here, "pid": int(gone.stdout)}},
        ids[1]: {"status": "claimed", "claimed_at": now, "night": "2026-01-09", "claim": "alive",
                 "owner": {"host": here, "pid": os.getpid()}},
        ids[2]: {"status": "claimed", "claimed_at": now, "night": "2026-01-09", "claim": "remote",
                 "owner": {"host": "another-host", "pid": int(gone.stdout)}}})
    result = send_alerts(store, cfg, NIGHT, frame, receiver.url)
    assert result.sent == 1 and len(receiver.bodies) == 1
    assert "00:00" in receiver.bodies[0]["text"]
    assert Store(cfg.store.root).read_json("alerts/tiny/ledger.json")[ids[0]]["status"] == "sent"


def test_slack_text_is_escaped():
    seg = {"entity": "<!channel> & <http://evil|click>", "start": datetime(2026, 1, 9),
           "end": datetime(2026, 1, 9, 1), "rows": 2, "peak_score": 3.0, "threshold": 1.0,
           "top_features": ["a<b", "c&d"], "model_version": "v1", "id": "x>y"}
    body = slack_message("ds", seg)
    texts = [body["text"], body["blocks"][0]["text"]["text"], body["blocks"][1]["elements"][0]["text"]]
    assert all("<" not in t and ">" not in t for t in texts)
    assert "&lt;!channel&gt; &amp; &lt;http://evil|click&gt;" in body["text"]
    assert "a&lt;b, c&amp;d" in body["text"] and "x&gt;y" in texts[2]
