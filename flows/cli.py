"""`nightowl` command line: run the flows, list families, check configs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from schemas.config import DatasetConfig

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="nightowl: nightly deep anomaly detection on Prefect")

ConfigArg = typer.Option(None, "--config", "-c", help="dataset TOML (default: the synthetic demo)")


def _quiet_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # The ephemeral API migrates a new database on its first start: on a loaded 2-core
    # machine that took longer than Prefect's 20 s default, and `make demo` failed there.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@app.command()
def demo(config: Path | None = ConfigArg) -> None:
    """Run the whole pipeline on the embedded synthetic dataset and print a summary."""
    _quiet_defaults()
    from flows.demo import demo_flow, format_summary

    result = demo_flow(str(config) if config else None)
    typer.echo("\n" + format_summary(result, str(config) if config else None))


@app.command()
def train(config: Path | None = ConfigArg,
          run_id: str | None = typer.Option(None, help="resume this run's checkpoints")) -> None:
    """Train every configured family and choose the champion."""
    _quiet_defaults()
    from tasks.store import UnsafeKeyError, safe_component

    try:  # before any flow starts: a bad id must not reach a store key
        run_id = safe_component(run_id, "--run-id") if run_id else None
    except UnsafeKeyError as err:
        typer.echo(f"invalid: {err}", err=True)
        raise typer.Exit(2) from None
    from flows.train import train_flow

    result = train_flow(str(config) if config else None, run_id)
    typer.echo(json.dumps(result["champion"], indent=2))


@app.command()
def score(day: str = typer.Argument(..., help="YYYY-MM-DD"), config: Path | None = ConfigArg) -> None:
    """Score one night with the champion (rerunning replaces the partition)."""
    _quiet_defaults()
    from flows.nightly import nightly_flow

    result = nightly_flow(str(config) if config else None, date.fromisoformat(day))
    typer.echo(json.dumps(result["scoring"], indent=2))


@app.command()
def backfill(start: str, end: str, config: Path | None = ConfigArg) -> None:
    """Score every night in [START, END)."""
    _quiet_defaults()
    from flows.nightly import backfill_flow

    for night in backfill_flow(str(config) if config else None, date.fromisoformat(start),
                               date.fromisoformat(end)):
        typer.echo(json.dumps(night))


@app.command()
def serve(config: Path | None = ConfigArg,
          cron: str = typer.Option("0 2 * * *", help="schedule of the nightly deployment"),
          limit: int | None = typer.Option(None, help="max concurrent flow runs"),
          gpu_slots: int = typer.Option(1, help="task runs tagged `gpu` allowed at once")) -> None:
    """Serve the nightly, train, retrain (drift-triggered) and backfill deployments locally."""
    _quiet_defaults()
    from flows.deploy import serve as serve_deployments

    serve_deployments(str(config.resolve()) if config else None, cron, limit, gpu_slots)


@app.command("training-set")
def training_set(out: Path = typer.Argument(..., help="Parquet file to write the rows to"),
                 config: Path | None = ConfigArg,
                 model: str | None = typer.Option(None, help="FAMILY/VERSION (default: the champion)"),
                 group: str | None = typer.Option(None, help="the model's entity or group")) -> None:
    """Rebuild the exact rows a model version trained on (the validated table's recorded
    version, by time travel) and write them, with their split, as Parquet."""
    from flows.common import resolve_config
    from tasks.common import store_for
    from tasks.training.lineage import training_set as rebuild
    from tasks.versions import VersionRef, current_champion

    cfg = resolve_config(str(config) if config else None)
    scoped = cfg.for_group(group)
    store = store_for(cfg)
    if model:
        family, _, version = model.partition("/")
        ref = VersionRef(scoped.scope_name, family, version)
    else:
        ref = current_champion(store, scoped.scope_name)
    rows = rebuild(store, scoped, ref)
    rows.write_parquet(out)
    typer.echo(f"{rows.height} rows of {ref.family}/{ref.version} -> {out}")


@app.command()
def migrate(config: Path | None = ConfigArg) -> None:
    """Turn a store written before the Delta tables (parts + manifests) into the tables;
    running it again does nothing."""
    from flows.common import resolve_config
    from tasks.common import store_for
    from tasks.data.validated_migration import migrate_validated
    from tasks.nightly.scores_migration import migrate_scores

    cfg = resolve_config(str(config) if config else None)
    store = store_for(cfg)
    for done in (migrate_validated(store, cfg), migrate_scores(store, cfg)):
        typer.echo(json.dumps(done.to_json()))


@app.command()
def families() -> None:
    """List the model families with a one-line description each."""
    from models.registry import describe_families

    for name, text in describe_families().items():
        typer.echo(f"{name:<16}{text}")


@app.command("check-config")
def check_config(
    config: Path | None = typer.Argument(None, help="dataset TOML to check"),
    explain: bool = typer.Option(False, "--explain", help="list what a config must set and every "
                                 "default (read from the schema), then check CONFIG if given"),
) -> None:
    """Load a config and report the first bad field, if any."""
    from schemas.config import ConfigError, load_config

    if explain:
        from schemas.explain import explain as explain_text

        typer.echo(explain_text())
    if config is None:
        if not explain:
            raise typer.BadParameter("give a CONFIG to check, or --explain")
        return
    try:
        cfg = load_config(config)
    except ConfigError as err:
        typer.echo(f"invalid: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"ok: dataset {cfg.name!r}, {len(cfg.columns.features)} features, "
               f"families {[f.name for f in cfg.families]}")


@app.command()
def benchmark(
    kind: str = typer.Argument(..., help="smd (also ASD), nab, odds or table (any labelled CSV/Parquet)"),
    path: Path = typer.Argument(..., help="root of the data set (e.g. ../shared/data/smd)"),
    families: str | None = typer.Option(None, help="comma-separated families (default: all)"),
    out: Path | None = typer.Option(None, help="also write the table as CSV here"),
    epochs: int | None = typer.Option(None, help="training epochs per family (default: the config's, 5 when it has no [training])"),
    max_train_windows: int | None = typer.Option(None, help="training windows per family (default: the config's, 5000 when it has no [training])"),
    window: int | None = typer.Option(None, help="override the loader's window length"),
    work_dir: Path = typer.Option(Path(".nightowl/benchmark"), help="raw files, store, reports"),
    threads: int = typer.Option(1, help="torch CPU threads (1 is fastest on a shared, loaded box)"),
    baselines: bool = typer.Option(False, help="also run PyOD KNN/LOF/PCA/IForest/AutoEncoder and "
                                   "the chapter's LSTM-AE on the same rows (needs the bench extra)"),
    series: str | None = typer.Option(None, help="comma-separated series names (default: all)"),
) -> None:
    """Run families through the real pipeline on every series under PATH; metrics on unseen rows."""
    _quiet_defaults()
    from flows.benchmark import BenchmarkOptions, format_table, run_benchmark

    options = BenchmarkOptions(
        families=tuple(f.strip() for f in families.split(",") if f.strip()) if families else (),
        epochs=epochs, max_train_windows=max_train_windows, window=window, threads=threads,
        baselines=baselines)
    names = [s.strip() for s in series.split(",") if s.strip()] if series else None
    table = run_benchmark(kind, path, work_dir / kind, options, names)
    typer.echo(format_table(table))
    if out:
        table.write_csv(out)
        typer.echo(f"wrote {out}")


# -- labels: operators' answers (tasks/feedback) -------------------------------------------


def _label_config(config: Path | None) -> DatasetConfig:
    """The config, or exit 2 naming the bad field."""
    from flows.common import resolve_config
    from schemas.config import ConfigError

    try:
        return resolve_config(str(config) if config else None)
    except ConfigError as err:
        typer.echo(f"invalid: {err}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def _label_errors() -> Iterator[None]:
    """A bad label is the caller's mistake: one line on stderr naming the row and field, exit
    1, nothing written (the labels module raises before it writes)."""
    from tasks.feedback.labels import LabelError

    try:
        yield
    except LabelError as err:
        typer.echo(f"invalid: {err}", err=True)
        raise typer.Exit(1) from None


@app.command("label")
def label_command(
    dataset: str = typer.Argument(..., help="the dataset's name (must be the config's)"),
    entity: str = typer.Argument(..., help="entity (machine, series) the label is about"),
    start: str = typer.Argument(..., help="first instant, ISO 8601 (no offset: UTC)"),
    end: str = typer.Argument(..., help="last instant, included"),
    verdict: str = typer.Argument(..., help="anomaly, normal (a false alarm) or unsure"),
    note: str | None = typer.Option(None, help="free text kept with the label"),
    who: str | None = typer.Option(None, help="who answers (default: the login name)"),
    segment: str | None = typer.Option(None, help="the alert segment id it answers"),
    request_id: str | None = typer.Option(None, help="idempotency key: a retried command with "
                                          "the same id writes once"),
    config: Path | None = ConfigArg,
) -> None:
    """Record an operator's verdict about one period of one entity in the labels table."""
    _quiet_defaults()
    from tasks.feedback.labels import label, require_dataset

    cfg = _label_config(config)
    with _label_errors():
        require_dataset(cfg, dataset)
        done = label(cfg, entity, start, end, verdict, note=note, who=who, segment=segment,
                     key=request_id)
    typer.echo(f"{done.written} label written ({done.duplicates} already there) to {done.table} "
               f"(version {done.version})")


@app.command("label-import")
def label_import_command(
    path: Path = typer.Argument(..., help="incident export (CSV); columns mapped in "
                                "[feedback.import_columns]"),
    config: Path | None = ConfigArg,
) -> None:
    """Record every row of an incident export as a label: all rows, or none when one is bad."""
    _quiet_defaults()
    from tasks.feedback.imports import import_labels

    cfg = _label_config(config)
    with _label_errors():
        done = import_labels(cfg, path)
    typer.echo(f"{done.requested} rows: {done.written} new label(s), {done.duplicates} already "
               f"there, in {done.table} (version {done.version})")


@app.command("labels")
def labels_command(config: Path | None = ConfigArg,
                   history: bool = typer.Option(False, help="every answer, not just the latest")
                   ) -> None:
    """Print the current labels (latest answer per segment) as CSV."""
    from tasks.feedback.labels import current_labels, label_history

    cfg = _label_config(config)
    typer.echo((label_history(cfg) if history else current_labels(cfg)).write_csv(), nl=False)


@app.command("feedback-check")
def feedback_check_command(config: Path | None = ConfigArg) -> None:
    """Test each champion against the labels now: recalibrate thresholds that reviewed false
    alarms break, raise the drift event on enough missed incidents (also run after a review)."""
    _quiet_defaults()
    from tasks.feedback.adapt import check_feedback, feedback_scopes
    from tasks.feedback.labels import current_labels

    cfg = _label_config(config)
    entities = current_labels(cfg)["entity"].unique().to_list()
    for scope in feedback_scopes(cfg, entities):
        done = check_feedback.fn(scope, str(config) if config else None)
        moved = done.recalibrated["reason"] if done.recalibrated else "no threshold moved"
        typer.echo(f"{scope.label}: {len(done.tests)} entity test(s); {moved}; "
                   f"{len(done.missed)} missed incident(s); event: {done.event or 'none'}")


if __name__ == "__main__":
    app()
