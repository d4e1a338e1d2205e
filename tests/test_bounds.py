"""Issue 20: secrets stay out of flow parameters, every input is bounded, odd names and signed
URLs are shown safely. (Against a real `prefect server`: tests/test_secrets_server.py; the
bad-input kinds with the fault matrix's checks: tests/test_fault_matrix.py.)"""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
import typing
from datetime import date
from pathlib import Path

import pytest

from schemas.config import ConfigError, ConfigRef, DatasetConfig, load_config, parse_config
from tasks.common import shown_url
from tasks.data import ingest  # imported first: it sets logging up (GX) before caplog hooks in
from tests.tiny import tiny_config, write_config

SECRETS = {"source": "planted-source-3f1c", "store": "planted-store-9a2e",
           "block": "planted-block-77d0", "hook": "planted-hook-51b8"}


def secret_config(root: Path) -> str:
    data = tiny_config(root, store={"storage_options": {"secret": SECRETS["store"]},
                                    "credentials_block": SECRETS["block"]},
                       alerts={"webhook_secret_block": SECRETS["hook"]})
    data["store"]["root"] = "s3://bucket/prefix"
    data["source"]["storage_options"] = {"token": SECRETS["source"]}
    return write_config(root, data)


def test_a_config_reference_carries_no_secret_and_resolves_to_the_same_config(tmp_path):
    cfg = load_config(secret_config(tmp_path)).for_group(None)
    ref = ConfigRef.of(cfg.model_copy(update={"window": cfg.window.model_copy(
        update={"length": 8})}))  # an in-memory change travels
    dumped = ref.model_dump_json()
    assert not [s for s in SECRETS.values() if s in dumped]
    assert "tiny" in dumped and ref.path == str((tmp_path / "tiny.toml").resolve())
    back = ref.resolve()
    assert back.window.length == 8 and back.store.storage_options == {"secret": SECRETS["store"]}
    assert back.model_copy(update={"window": cfg.window}) == cfg


def test_secrets_changed_in_memory_or_without_a_file_are_refused(tmp_path):
    cfg = load_config(secret_config(tmp_path))
    changed = cfg.model_copy(update={"store": cfg.store.model_copy(
        update={"storage_options": {"secret": "other"}})})
    with pytest.raises(ConfigError, match="changed in memory"):
        ConfigRef.of(changed)
    fileless = parse_config(json.loads(cfg.model_dump_json()))
    with pytest.raises(ConfigError, match="must be loaded from a file"):
        ConfigRef.of(fileless)
    plain = parse_config(tiny_config(tmp_path))  # no secret: passed whole, no file needed
    assert ConfigRef.of(plain).resolve() == plain


def test_no_flow_takes_a_config_object():
    """Prefect stores every flow run's parameters: a flow parameter must never be the config."""
    import flows.benchmark
    import flows.candidates
    import flows.demo
    import flows.nightly
    import flows.retrain
    import flows.train

    found = {}
    for module in (flows.train, flows.candidates, flows.nightly, flows.retrain, flows.demo,
                   flows.benchmark):
        for name, obj in vars(module).items():
            if hasattr(obj, "fn") and hasattr(obj, "flow_run_name"):  # a Prefect flow
                found[f"{module.__name__}.{name}"] = typing.get_type_hints(obj.fn)
    assert len(found) >= 7
    takes_config = {flow: [p for p, t in hints.items() if DatasetConfig in (t, *typing.get_args(t))]
                    for flow, hints in found.items()}
    assert takes_config == {flow: [] for flow in found}
    assert inspect.signature(flows.candidates.candidates_flow.fn).parameters["config"].annotation \
        == "ConfigRef"


def test_a_signed_url_is_shown_without_its_token_or_password():
    url = "https://user:pw@bucket.s3.amazonaws.com/raw/2026-01-09.csv?X-Amz-Signature=abc#frag"
    assert shown_url(url) == "https://bucket.s3.amazonaws.com/raw/2026-01-09.csv"
    assert shown_url("file:///data/odd?name\n.csv") == "file:///data/odd?name\\n.csv"


def test_a_signed_source_url_never_reaches_a_report_or_a_log(tmp_path, caplog):
    """An http(s) source with a presigned query: the outcome, the quarantine report and every
    log line show the URL without it."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from tasks.store import Store

    served = tmp_path / "served"
    served.mkdir()
    (served / "2026-01-09.csv").write_bytes(b"timestamp,entity,s00\n")  # fails: columns missing

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    Thread(target=server.serve_forever, daemon=True).start()
    token = "X-Amz-Signature=planted0token0"
    url = f"http://127.0.0.1:{server.server_port}/2026-01-09.csv?{token}"
    try:
        cfg = parse_config(tiny_config(tmp_path, source={"path": url}))
        store = Store(cfg.store.root)
        caplog.set_level("DEBUG")
        outcome = ingest.ingest_batch(store, cfg, url)
    finally:
        server.shutdown()
    assert outcome.status == "quarantined" and outcome.reasons[0].startswith("2026-01-09.csv: ")
    written = b"".join(store.read_bytes(k) for k in store.list("")).decode(errors="replace")
    logged = [r.getMessage() for r in caplog.records  # fsspec's DEBUG trace is its own
              if r.levelno >= logging.INFO or r.name.startswith(("tasks", "flows"))]
    # the quarantine warning names the source (other loggers' lines depend on what earlier
    # tests did to logging): it must be seen, and without the token
    assert any(line.startswith("quarantined 2026-01-09.csv") for line in logged)
    assert "planted0token0" not in written + json.dumps(logged) + json.dumps(outcome.to_dict())
    assert outcome.source == f"http://127.0.0.1:{server.server_port}/2026-01-09.csv"


def test_entity_scope_trains_at_most_the_bounded_number_of_models(tmp_path, prefect_harness):
    from tasks.data.ingest import ingest_source
    from tasks.data.prepare import plan_scopes
    from tasks.data.synthetic import materialize

    data = tiny_config(tmp_path, model={"scope": "entity", "min_train_rows": 1},
                       limits={"model_scopes": 2})
    data["source"]["synthetic"]["entities"] = 4
    cfg = parse_config(data)
    materialize(cfg.source.synthetic, cfg.source.path)
    ingest_source.fn(cfg)
    plan = plan_scopes.fn(cfg)
    assert len([g for g in plan.groups if g is not None]) == 2 and None in plan.groups
    assert len(plan.skipped) == 2 and not set(plan.skipped) & set(plan.groups)


def test_the_alert_ledger_forgets_sent_segments_past_its_retention():
    from tasks.nightly.alert import retained

    ledger = {"old": {"status": "sent", "night": "2025-12-01"},
              "kept": {"status": "sent", "night": "2026-03-01"},
              "claim": {"status": "claimed", "night": "2026-01-01", "claim": "x"}}
    assert set(retained(ledger, date(2026, 4, 1), 90)) == {"kept", "claim"}
    assert set(retained(ledger, date(2026, 4, 1), 30)) == {"claim"}


MEASURE = """
import gzip, resource, sys, pyarrow as pa
sys.path.insert(0, sys.argv[1])
from schemas.config import LimitsConfig
from tasks.data import limits
codec, expanded = sys.argv[2], int(sys.argv[3])
rows = b"2026-01-06T00:00:00,m0,1,2,3,0\\n" * (1 << 18)  # 8 MiB
member = gzip.compress(rows) if codec == "gzip" else pa.compress(rows, codec, asbytes=True)
# concatenated members (gzip) / frames (zstd) are one valid stream: how real bombs are built
bomb = gzip.compress(b"timestamp,entity,a,b,c,label\\n") if codec == "gzip" else b""
bomb += member * (expanded // len(rows))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    limits.checked_csv(LimitsConfig(), bomb, "bomb.csv")
    print("NOT STOPPED")
except limits.OverLimit as err:
    print(err)
print(len(bomb), base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow  # ~15 s each on a loaded 2-core box: 1 GiB streamed; the matrix has small bombs
@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_a_compression_bomb_is_stopped_at_the_default_bound_with_flat_memory(codec):
    """2 GiB once expanded, against the default `decompressed_bytes` of 1 GiB: stopped, and the
    process's peak memory grows by far less than what was expanded (chunks, not the file)."""
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", MEASURE, repo, codec, str(2 << 30)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == (f"bomb.csv: file failed bound 'limits.decompressed_bytes = {1 << 30}' "
                      f"({codec} expands past it)")
    compressed, before_kib, peak_kib = map(int, out[1].split())
    assert compressed < 16 << 20
    assert (peak_kib - before_kib) * 1024 < 128 << 20, (before_kib, peak_kib)


@pytest.mark.parametrize("codec", [None, "gzip"])
def test_the_line_bound_is_exact_wherever_the_long_line_lies(codec):
    """A line one byte past `line_bytes` is refused, one at it passes: first, in the middle,
    across a decompressed chunk's edge, and last without a newline."""
    import gzip

    from schemas.config import LimitsConfig
    from tasks.data import limits

    bound = 1 << 20
    row = b"2026-01-05T00:00:00,m1,1.0\n"
    filler = row * ((limits.CHUNK - bound // 2) // len(row))  # the long line crosses a chunk edge

    def csv(long: int, where: str) -> bytes:
        line = b"2026-01-05T00:00:00,m1," + b"9" * (long - 23)
        body = {"first": line + b"\n" + row * 1000, "middle": row * 1000 + line + b"\n" + row,
                "edge": filler + line + b"\n" + row * 1000, "last": row * 1000 + line}[where]
        data = b"timestamp,entity,a\n" + body
        return gzip.compress(data, 1) if codec else data

    for where in ("first", "middle", "edge", "last"):
        assert limits.checked_csv(LimitsConfig(), csv(bound, where), "x.csv")
        with pytest.raises(limits.OverLimit, match="limits.line_bytes = 1048576"):
            limits.checked_csv(LimitsConfig(), csv(bound + 1, where), "x.csv")
