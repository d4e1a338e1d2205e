"""What ingestion shows in the Prefect UI: one link artifact per quarantined batch.

Why: a quarantined batch is data that did not arrive. The operator should get from the run
to the evidence in one click: the link opens the batch's Great Expectations result
(`validation.json`, beside the untouched source file), and the link's text is the one-line
reason. The key `quarantine-<ds>-<batch-id>` follows the batch across runs.
"""

from __future__ import annotations

import posixpath

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import artifact_key, store_for
from tasks.data.ingest import BatchOutcome, IngestReport
from tasks.ui import object_url, publish_link, url_note

MAX_REASON_CHARS = 200


def quarantine_key(cfg: DatasetConfig, batch: BatchOutcome) -> str:
    return artifact_key("quarantine", cfg.name, batch.batch_id)


def one_line_reason(batch: BatchOutcome) -> str:
    """The batch's first reason on one line, with a count of the others."""
    reasons = batch.reasons or [batch.reason or "failed validation"]
    first = " ".join(reasons[0].split())
    if len(first) > MAX_REASON_CHARS:
        first = first[: MAX_REASON_CHARS - 1] + "…"
    return first + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")


def link_text(batch: BatchOutcome) -> str:
    """'<file>: <one-line reason>' (reasons that already name the file keep their own prefix)."""
    name, reason = posixpath.basename(batch.source), one_line_reason(batch)
    return reason if reason.startswith(f"{name}:") else f"{name}: {reason}"


def validation_key(batch: BatchOutcome) -> str:
    """The stored GX result of a quarantined batch (its keys: source copy, validation.json)."""
    return next((k for k in batch.keys if k.endswith("/validation.json")), batch.keys[-1])


@task(name="publish-ingestion-artifacts", cache_policy=NO_CACHE)
def publish_ingestion(cfg: DatasetConfig, report: IngestReport) -> list[str]:
    """A keyed link artifact for each quarantined batch of an ingestion; returns the keys."""
    if not report.quarantined:
        return []
    store = store_for(cfg)
    keys = []
    for batch in report.quarantined:
        folder = posixpath.dirname(validation_key(batch))
        keys.append(publish_link(
            quarantine_key(cfg, batch), object_url(cfg, store, validation_key(batch)),
            link_text(batch),
            (f"Quarantined batch `{batch.batch_id}` of {cfg.name} ({batch.rows} rows) from "
             f"{batch.source}. The link opens its validation result; "
             + (f"the untouched source file is beside it in {store.uri(folder)}. "
                if len(batch.keys) > 1 else "the file was not copied (past limits.file_bytes): "
                "the source keeps it. ") + url_note(cfg, store, plots=False))))
    return keys
