"""Lineage: a model version records the validated table version it trained on, and its exact
training set is rebuilt by time travel after later deliveries changed the table."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from flows.cli import app
from schemas.config import load_config, parse_config
from tasks.data import layer
from tasks.data.prepare import assign_splits
from tasks.data.scale import ScalerParams, apply_scaler
from tasks.data.synthetic import materialize
from tasks.store import Store
from tasks.training.lineage import training_set
from tasks.versions import CONFIG, SCALER, current_champion, load_version_files
from tests.tiny import tiny_config, write_config


def test_a_version_rebuilds_its_training_set_after_the_table_moved_on(prefect_harness,
                                                                        tmp_path: Path) -> None:
    import torch

    from flows.train import train_flow

    torch.set_num_threads(2)
    data = tiny_config(tmp_path)
    files = materialize(parse_config(data).source.synthetic, data["source"]["path"])
    config = write_config(tmp_path, data)
    train_flow(config)
    cfg = load_config(config)
    store = Store(cfg.store.root)
    ref = current_champion(store, cfg.scope_name)
    recorded = json.loads(load_version_files(store, ref, [CONFIG])[CONFIG])["data"]
    trained_on = recorded["table_version"]
    assert trained_on == layer.table_version(store, cfg)
    start, end = recorded["start"], recorded["end"]

    # later: the first training day is corrected at the source, and ingested again
    first = Path(sorted(files)[0])
    raw = pl.read_csv(first, try_parse_dates=True)
    raw.with_columns(pl.col("s00") + 10.0).write_csv(first)
    from tasks.data.ingest import ingest_urls, list_sources

    ingest_urls(store, cfg, list_sources(cfg))
    assert layer.table_version(store, cfg) > trained_on

    rebuilt = training_set(store, cfg, ref)
    today = assign_splits(layer.load_validated(store, cfg, pl.Series([start]).str.to_datetime()[0],
                                               pl.Series([end]).str.to_datetime()[0]),
                          cfg.splits, with_score=False)
    assert rebuilt.height == today.height and not rebuilt.equals(today)  # the table moved on
    # ... and the rebuilt rows are what training scaled: the same rows, the same values
    scaler = ScalerParams.from_json(json.loads(load_version_files(store, ref, [SCALER])[SCALER]))
    (scaled_key,) = [k for k in store.list(f"datasets/{cfg.scope_name}/scaled")
                     if k.endswith("scaled.parquet")]
    scaled = pl.from_arrow(store.read_parquet(scaled_key))
    assert apply_scaler(rebuilt, scaler).select(scaled.columns).equals(scaled)

    out = tmp_path / "rows.parquet"
    result = CliRunner().invoke(app, ["training-set", str(out), "--config", config])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).equals(rebuilt)
