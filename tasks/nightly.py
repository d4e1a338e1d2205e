"""Inputs of a nightly run: only the night's batches, the night's scores, the champion's reference.

Why a night ingests only its own files: re-validating the whole history every
night grows without bound. A batch belongs to a night when its file name
carries the night's date (or the day before, the window context); when no file
name carries a date, nothing can be known and every batch is ingested
(ingestion is idempotent, so that is only slower, never wrong).
"""

from __future__ import annotations

import json
import posixpath
import re
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import DatasetConfig
from tasks.common import IO_RETRIES, run_logger, store_for
from tasks.drift import REFERENCE_FILE
from tasks.ingest import ingest_all, load_validated
from tasks.register import champion_ref, load_version_files, read_champion
from tasks.scale import ScalerParams, apply_scaler

DATE_IN_NAME = re.compile(r"\d{4}-\d{2}-\d{2}")


def batches_for_night(urls: list[str], day: date) -> list[str] | None:
    """The batches of a night and its context day; None when file names carry no dates."""
    dated = {u: DATE_IN_NAME.findall(posixpath.basename(u)) for u in urls}
    if not any(dated.values()):
        return None
    wanted = {day.isoformat(), (day - timedelta(days=1)).isoformat()}
    return [u for u, days in dated.items() if wanted & set(days)]


@task(name="ingest-night", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest_night(cfg: DatasetConfig, day: date) -> dict[str, Any]:
    """Validate the night's batches (bad ones go to quarantine); same summary as ingest_source."""
    from tasks.ingest import list_batches

    urls = list_batches(cfg)
    chosen = batches_for_night(urls, day)
    if chosen is not None:
        run_logger(__name__).info("%s %s: ingesting %d of %d batches", cfg.name, day,
                                  len(chosen), len(urls))
        return _ingest_urls(cfg, chosen)
    return ingest_all(store_for(cfg), cfg)


def _ingest_urls(cfg: DatasetConfig, urls: list[str]) -> dict[str, Any]:
    from tasks.ingest import ingest_batch

    store = store_for(cfg)
    outcomes = [ingest_batch(store, cfg, u).to_dict() for u in urls]
    ok = [o for o in outcomes if o["status"] == "validated"]
    bad = [o for o in outcomes if o["status"] == "quarantined"]
    return {"dataset": cfg.name, "rows_in": sum(o["rows"] for o in outcomes),
            "rows_validated": sum(o["rows"] for o in ok),
            "rows_quarantined": sum(o["rows"] for o in bad),
            "batches_validated": len(ok), "batches_quarantined": len(bad), "batches": outcomes}


@task(name="champion-reference", cache_policy=NO_CACHE, **IO_RETRIES)
def champion_reference(cfg: DatasetConfig) -> dict[str, Any] | None:
    """The champion's drift reference (None for versions registered without one)."""
    store = store_for(cfg)
    pointer = read_champion(store, cfg.name)
    if pointer is None:
        return None
    ref = champion_ref(pointer)
    if REFERENCE_FILE not in store.read_json(f"{ref.key}/MANIFEST.json")["files"]:
        return None
    return json.loads(load_version_files(store, ref, [REFERENCE_FILE])[REFERENCE_FILE])


@task(name="night-inputs", cache_policy=NO_CACHE, **IO_RETRIES)
def night_inputs(cfg: DatasetConfig, day: date, scores_key: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the night's scores, the night's rows scaled with the scoring model's scaler)."""
    store = store_for(cfg)
    scores = pl.from_arrow(store.read_parquet(scores_key))
    version = scores["model_version"][0]
    family = scores["model_family"][0]
    ref = champion_ref({"dataset": cfg.name, "family": family, "version": version})
    scaler = ScalerParams.from_json(json.loads(load_version_files(store, ref, ["scaler.json"])
                                               ["scaler.json"]))
    start = datetime.combine(day, datetime.min.time())
    rows = load_validated(store, cfg, start, start + timedelta(days=1))
    return scores, apply_scaler(rows, scaler)
