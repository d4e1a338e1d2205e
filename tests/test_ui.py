"""What the Prefect UI shows: plot URLs a browser loads, links, live progress, and S3 through a
prefect-aws credentials block whose secret appears nowhere."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest

from schemas.config import parse_config
from tasks.store import Store, StoreError
from tasks.ui import (
    PNG_MAGIC,
    LiveProgress,
    duration,
    folder_url,
    image_src,
    md_url,
    object_url,
)
from tests.tiny import tiny_config

BUCKET = "nightowl-ui"
PNG = PNG_MAGIC + b"not really a picture, but the bytes a browser would get"


def _cfg(tmp_path, **overrides):
    return parse_config(tiny_config(tmp_path, **overrides))


def test_local_store_plots_inline_and_links_as_file_uris(tmp_path):
    cfg = _cfg(tmp_path)
    store = Store(cfg.store.root)
    store.write_bytes("models/tiny/pca/v1/plots/timeline.png", PNG)
    src = image_src(cfg, store, "models/tiny/pca/v1/plots/timeline.png")
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == PNG
    assert object_url(cfg, store, "scores/tiny/x.parquet") == store.uri("scores/tiny/x.parquet")
    assert folder_url(cfg, store, "models/tiny/pca/v1", "MANIFEST.json").endswith("/v1/")


def test_store_url_serves_plots_and_links_over_http(tmp_path):
    cfg = _cfg(tmp_path, ui={"store_url": "http://files.example:8000/store/"})
    store = Store(cfg.store.root)
    key = "models/tiny/pca/v1/plots/timeline.png"
    assert image_src(cfg, store, key) == f"http://files.example:8000/store/{key}"
    assert folder_url(cfg, store, "models/tiny/pca/v1", "MANIFEST.json") == (
        "http://files.example:8000/store/models/tiny/pca/v1/")
    inline = _cfg(tmp_path, ui={"store_url": "http://files.example:8000", "images": "inline"})
    store.write_bytes(key, PNG)
    assert image_src(inline, store, key).startswith("data:image/png;base64,")
    assert md_url("file:///a b/(c).png") == "file:///a%20b/%28c%29.png"


def test_s3_plots_are_presigned_urls_a_browser_loads(tmp_path, s3_url):
    root = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"
    cfg = _cfg(tmp_path, store_root=root, ui={"presign_expiry_hours": 2})
    store = Store(root)
    store.write_bytes("models/tiny/pca/v1/plots/timeline.png", PNG)
    store.write_bytes("models/tiny/pca/v1/MANIFEST.json", b"{}")
    src = image_src(cfg, store, "models/tiny/pca/v1/plots/timeline.png")
    assert src.startswith(s3_url) and "X-Amz-Expires=7200" in src and "X-Amz-Signature=" in src
    assert httpx.get(src).content == PNG
    manifest = folder_url(cfg, store, "models/tiny/pca/v1", "MANIFEST.json")
    assert httpx.get(manifest).content == b"{}"  # S3 has no folders: the manifest stands in
    with pytest.raises(StoreError, match="only object stores"):
        Store(f"file://{tmp_path}/s").sign("k", 60)


def test_config_rejects_ui_and_block_settings_that_cannot_work(tmp_path):
    from schemas.config import ConfigError

    with pytest.raises(ConfigError, match="credentials_block needs an s3:// root"):
        _cfg(tmp_path, store={"credentials_block": "prod-s3"})
    with pytest.raises(ConfigError, match="ui.images = 'url' needs an s3:// store"):
        _cfg(tmp_path, ui={"images": "url"})
    with pytest.raises(ConfigError, match="ui.presign_expiry_hours"):
        _cfg(tmp_path, ui={"presign_expiry_hours": 200})


def test_duration_reads_at_a_glance():
    assert [duration(s) for s in (0.4, 42, 185, 7620)] == ["0 s", "42 s", "3 min 05 s",
                                                           "2 h 07 min"]


def test_live_progress_moves_throttles_and_never_fails_the_work(prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client

    assert LiveProgress("ui-test-outside", "no run").update(50, "x", force=True) is False

    def stored(artifact_id) -> tuple[float, str]:
        with get_client(sync_client=True) as client:
            artifact = client.read_artifacts(limit=200)
        (found,) = [a for a in artifact if a.id == artifact_id]
        return found.data, found.description

    @flow(name="ui-progress-test")
    def watched() -> list:
        seen = []
        bar = LiveProgress("ui-test-progress", "starting", every_s=0)
        seen.append(stored(bar.artifact_id))
        for percent in (25, 50):
            assert bar.update(percent, f"at {percent}")
            seen.append(stored(bar.artifact_id))
        slow = LiveProgress("ui-test-throttled", "starting", every_s=3600)
        assert slow.update(10, "too soon") is False and slow.update(99, "forced", force=True)
        seen.append(stored(slow.artifact_id))
        broken = LiveProgress("ui-test-broken", "starting", every_s=0)
        broken.artifact_id = uuid.uuid4()  # an artifact the API does not know: the update fails
        assert broken.update(30, "lost") is False and broken.artifact_id is None
        return seen

    assert watched() == [(0.0, "starting"), (25.0, "at 25"), (50.0, "at 50"), (99.0, "forced")]


def test_training_progress_says_epoch_losses_best_and_eta():
    from models.engine import EpochProgress, FitResult
    from tasks.training.progress import describe_epoch, describe_fit

    p = EpochProgress("vae", 11, 60, 0.0123, 0.015, 10, 0.0149, 34.2, 71.0)
    assert p.percent == 20.0
    assert describe_epoch(p) == ("vae: epoch 12/60 · train loss 0.0123 · holdout 0.015 (best "
                                 "0.0149 at epoch 11) · 34 s elapsed · ETA ≤ 1 min 11 s")
    assert str(p) == "vae: epoch 12/60 holdout=0.01500 elapsed=34.2s eta<=71.0s"  # the log line
    stopped = FitResult(best_epoch=17, best_holdout=0.0149, epochs_run=23, seconds=41.0,
                        samples_per_s=5120.0)
    assert describe_fit("vae", stopped, 60) == (
        "vae: done, 23/60 epochs (early stop) in 41 s · kept epoch 18, holdout loss 0.0149 · "
        "5,120 windows/s")
    assert describe_fit("pca", FitResult(seconds=0.4), 60) == "pca: fitted in closed form in 0 s"
