"""Alerts: one webhook POST per anomalous segment, Slack-compatible, never twice."""

from __future__ import annotations

import json
import threading
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import polars as pl
import pytest

from schemas.config import parse_config
from tasks.nightly.alert import AlertDeliveryError, find_segments, send_alerts
from tasks.store import Store
from tests.tiny import tiny_config

NIGHT = date(2026, 1, 9)


class Receiver:
    """A local HTTP endpoint on 127.0.0.1 recording every JSON body it receives."""

    def __init__(self) -> None:
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
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
