"""Reading what the Prefect UI shows: the latest artifact per key, and the images in them."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx

from tasks.ui import PNG_MAGIC

TEXT = r"\[(?:\\.|[^\]\\])*\]"  # [text], brackets inside escaped
IMAGE = re.compile(r"!" + TEXT + r"\(([^)\s]+)\)")
LINK = re.compile(r"(?<!!)" + TEXT + r"\(([^)\s]+)\)")


def latest_artifacts(keys: list[str]) -> dict[str, Any]:
    """The newest artifact of each key, from the API the current Prefect settings point at."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
            sort=ArtifactSort.CREATED_DESC)
    latest: dict[str, Any] = {}
    for artifact in found:
        latest.setdefault(artifact.key, artifact)
    return latest


def everything_recorded() -> str:
    """Every artifact, log line and flow/task run (parameters, states) the API holds, as text:
    what a secret must never appear in."""
    from prefect.client.orchestration import get_client

    parts: list[str] = []
    with get_client(sync_client=True) as client:
        for read in (client.read_artifacts, client.read_logs, client.read_flow_runs,
                     client.read_task_runs):
            offset = 0
            while True:
                page = read(limit=200, offset=offset)
                parts += [item.model_dump_json() for item in page]
                if len(page) < 200:
                    break
                offset += 200
    return "\n".join(parts)


def image_urls(markdown: str) -> list[str]:
    return IMAGE.findall(markdown)


def link_urls(markdown: str) -> list[str]:
    return LINK.findall(markdown)


def png_at(url: str) -> bytes:
    """The PNG a browser would load for an <img src=url>: a data: URI decoded, or fetched."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        assert header == "data:image/png;base64", header
        data = base64.b64decode(payload)
    else:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200, (url, response.status_code)
        data = response.content
    assert data.startswith(PNG_MAGIC), url[:80]
    return data
