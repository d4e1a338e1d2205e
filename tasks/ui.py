"""What the Prefect UI shows beside the flow graph: plots a browser can load, links from a run
to its data in the store, and live progress of long work.

Shared by the training and nightly rooms (which never import each other). How a stored
plot or object reaches the browser that shows the UI (measured with Prefect 3.9's UI in
headless Chromium):

- `ui.store_url` set (the store root served over HTTP: `python -m http.server`, a CDN):
  plain URLs under it; they never expire.
- an S3 store: presigned GET URLs (`ui.presign_expiry_hours`, at most 7 days by SigV4).
  After that the artifact shows a broken image; the files stay in the store.
- a local store: plots are embedded in Markdown as `data:image/png;base64,...` (the UI
  renders them; they live in Prefect's database, so they never expire), and links are
  `file://` URIs to copy: a browser does not follow a file:// link from an http page.

Markdown rather than Prefect's image artifact: the image artifact's page prints its URL
under the image, which for a data: URI is 100+ kB of base64 on one line.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from schemas.config import DatasetConfig
from tasks.store import Store

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_COLORS = 64
PROGRESS_EVERY_S = 2.0  # at most one progress update per artifact this often (forced ones aside)


def figure_png(fig: Any) -> bytes:
    """PNG bytes of a matplotlib Figure on the Agg canvas (no pyplot state; thread-safe).

    A 64-colour palette PNG: line plots look the same and weigh a third (a validation
    timeline 92 kB -> 32 kB), which matters where plots are inlined into Prefect's database.
    Deterministic (no timestamp, fixed quantiser), so identical inputs give identical bytes
    and content-addressed versions stay stable.
    """
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    fig.set_dpi(100)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    image = Image.fromarray(rgb).quantize(colors=PNG_COLORS, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    image.save(buf, format="png", optimize=True)
    return buf.getvalue()


def in_prefect_run() -> bool:
    """Whether a flow or task run is active (artifacts need one; unit tests call `.fn()`)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


# -- URLs a browser can open -----------------------------------------------------------------


def inline_images(cfg: DatasetConfig) -> bool:
    """Whether plots go into artifacts as data: URIs (see the module docstring)."""
    if cfg.ui.images == "auto":
        return not (cfg.ui.store_url or cfg.store.root.startswith("s3://"))
    return cfg.ui.images == "inline"


def _expiry_s(cfg: DatasetConfig) -> int:
    return int(cfg.ui.presign_expiry_hours * 3600)


def object_url(cfg: DatasetConfig, store: Store, key: str) -> str:
    """A URL for one stored object: under `ui.store_url`, presigned on S3, else file://."""
    if cfg.ui.store_url:
        return f"{cfg.ui.store_url.rstrip('/')}/{key}"
    if not store.is_local:
        return store.sign(key, _expiry_s(cfg))
    return store.uri(key)


def folder_url(cfg: DatasetConfig, store: Store, folder: str, index: str) -> str:
    """A URL for a folder; on S3 (no folders to presign) its `index` object stands for it."""
    if not cfg.ui.store_url and not store.is_local:
        return store.sign(f"{folder}/{index}", _expiry_s(cfg))
    return object_url(cfg, store, folder).rstrip("/") + "/"


def image_src(cfg: DatasetConfig, store: Store, key: str) -> str:
    """What the UI's <img> loads for a stored PNG: the PNG inline, or its URL."""
    if inline_images(cfg):
        return "data:image/png;base64," + base64.b64encode(store.read_bytes(key)).decode()
    return object_url(cfg, store, key)


def md_url(url: str) -> str:
    """A URL safe inside a Markdown link or image: no spaces or parentheses."""
    return url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")


def md_text(text: str) -> str:
    """Text safe inside a Markdown link's brackets (reasons quote values like `[nan]`)."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def md_link(text: str, url: str) -> str:
    return f"[{md_text(text)}]({md_url(url)})"


def md_image(alt: str, src: str) -> str:
    return f"![{md_text(alt)}]({md_url(src)})"


def url_note(cfg: DatasetConfig, store: Store, plots: bool = True, links: bool = True) -> str:
    """One sentence on how long the links (and plots) of an artifact keep working. `links`
    False: the artifact's only store URLs are its plots (its links are the Prefect UI's)."""
    served = ("Links and plots" if plots else "Links") if links else "Plots"
    if cfg.ui.store_url:
        return f"{served} are served from {cfg.ui.store_url}."
    if not store.is_local:
        signed = "Links" if links and (inline_images(cfg) or not plots) else served
        return (f"{signed} are presigned S3 URLs, valid for {cfg.ui.presign_expiry_hours:g} h "
                "after publication.")
    if not links:
        return ("Plots are embedded." if inline_images(cfg) else "Plots are file:// paths on "
                "the machine that ran the flow: serve the store over HTTP and set `ui.store_url`.")
    return (f"{'Plots are embedded; l' if plots else 'L'}inks are file:// paths on the machine "
            "that ran the flow: copy one, or serve the store over HTTP and set `ui.store_url`.")


# -- artifacts -------------------------------------------------------------------------------


def publish_link(key: str, link: str, text: str, description: str) -> str:
    """A keyed link artifact (the UI stores it as Markdown `[text](link)`); returns its key."""
    from prefect.artifacts import create_link_artifact

    create_link_artifact(key=key, link=md_url(link), link_text=md_text(text),
                         description=description)
    return key


class LiveProgress:
    """A keyed progress artifact that follows long work as it runs.

    It never fails the work it watches: outside a Prefect run it does nothing, and after
    an API error it logs one warning and stops updating. Updates come at most every
    `every_s` seconds unless forced (the first and last always are).
    """

    def __init__(self, key: str, description: str, every_s: float = PROGRESS_EVERY_S) -> None:
        self.key, self.every_s = key, every_s
        self.artifact_id: Any = None
        self.percent = 0.0
        self._last = 0.0
        if not in_prefect_run():
            return
        self._call("create", lambda: self._create(description))

    def _create(self, description: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.artifact_id = create_progress_artifact(progress=0.0, key=self.key,
                                                    description=description)
        self._last = time.monotonic()

    def update(self, percent: float, description: str, force: bool = False) -> bool:
        """Set the bar and its one-line description; False when skipped (throttled or off)."""
        if self.artifact_id is None:
            return False
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return False
        from prefect.artifacts import update_progress_artifact

        percent = min(max(float(percent), 0.0), 100.0)
        self._last, self.percent = now, percent
        return self._call("update", lambda: update_progress_artifact(
            self.artifact_id, percent, description=description))

    def _call(self, what: str, action: Any) -> bool:
        try:
            action()
            return True
        except Exception as err:  # noqa: BLE001 - progress must never fail the work
            log.warning("progress artifact %s: %s failed (%s); no further updates", self.key,
                        what, type(err).__name__)
            self.artifact_id = None
            return False


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min': what a person reads at a glance."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
