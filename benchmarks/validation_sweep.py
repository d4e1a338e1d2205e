"""Scaling x window length on the VALIDATION slice only: evidence for a loader's defaults.

Why a separate script: choosing defaults on the held-out score split would be
test-set tuning, and the score-split numbers in RESULTS.md would stop meaning
"unseen". This script runs the pipeline's own stages (ingest with GX -> scale ->
window index -> shared engine -> calibration) for each (scaling, window) setting
and reports validation metrics only; it never reads the score split's labels.

    .venv/bin/python benchmarks/validation_sweep.py --kind smd --families dense_ae,pca,vae \
        --scalings standard,robust,minmax --windows 16,32,64 --epochs 20 --max-train-windows 20000
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from benchmarks.common import SHARED_DATA, table  # noqa: E402
from schemas.config import DatasetConfig, parse_config  # noqa: E402
from tasks.evaluation import loaders  # noqa: E402

log = logging.getLogger(__name__)

LOADERS = {"smd": (loaders.discover_smd, loaders.load_smd, SHARED_DATA / "smd"),
           "nab": (loaders.discover_nab, loaders.load_nab, SHARED_DATA / "nab")}
REPORTED = ("roc_auc", "pr_auc", "best_f1")  # VUS-PR's buffer follows the window: not comparable


def variant(cfg: DatasetConfig, scaling: str, window: int, families: list[str], epochs: int,
            max_train_windows: int) -> DatasetConfig:
    """The loader's config with one scaling and window, a fresh store and the compute caps."""
    data = cfg.model_dump()
    data["name"] = f"{cfg.name}-{scaling}-w{window}"
    data["scaling"]["method"] = scaling
    data["window"]["length"] = window
    data["families"] = [{"name": f} for f in families]
    data["training"].update(epochs=epochs, max_train_windows=max_train_windows)
    return parse_config(data, origin=f"sweep({data['name']})")


def validation_metrics(cfg: DatasetConfig) -> list[dict[str, Any]]:
    """Train every family of `cfg` through the pipeline's own stage sequence (one Prefect
    flow run) and return validation metrics only (the score split is never read)."""
    from prefect import flow

    from flows.candidates import train_candidates
    from tasks.data.ingest import ingest_source

    @flow(name="nightowl-validation-sweep")
    def sweep_run() -> list[dict[str, Any]]:
        ingest_source(cfg)
        (run,) = train_candidates(cfg, run_id="sweep", tolerate_failures=True)
        return [{"family": c.family, "scaling": cfg.scaling.method, "window": cfg.window.length,
                 "seconds": c.fit_seconds, **{f"val_{k}": c.metric(k) for k in REPORTED}}
                for c in run.candidates]

    return sweep_run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="smd", choices=sorted(LOADERS))
    parser.add_argument("--series", default="", help="default: every series of the kind")
    parser.add_argument("--families", default="dense_ae,pca,vae")
    parser.add_argument("--scalings", default="standard,robust,minmax")
    parser.add_argument("--windows", default="16,32,64")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--max-train-windows", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    discover, load, root = LOADERS[args.kind]
    names = [s for s in args.series.split(",") if s] or discover(root)
    families = [f for f in args.families.split(",") if f]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        for name in names:
            base, _ = load(root, name, Path(tmp))
            for scaling in args.scalings.split(","):
                for window in (int(w) for w in args.windows.split(",")):
                    cfg = variant(base, scaling, window, families, args.epochs,
                                  args.max_train_windows)
                    for row in validation_metrics(cfg):
                        rows.append({"series": name, **row})
                        print(rows[-1], flush=True)
    print(table(rows, ["series", "family", "scaling", "window", "val_roc_auc", "val_pr_auc",
                       "val_best_f1", "seconds"]))


if __name__ == "__main__":
    main()
