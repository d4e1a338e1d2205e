"""`nightowl` command line: run the flows, list families, check configs."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import typer

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
    epochs: int | None = typer.Option(None, help="cap training epochs per family"),
    max_train_windows: int | None = typer.Option(None, help="cap training windows per family"),
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


if __name__ == "__main__":
    app()
