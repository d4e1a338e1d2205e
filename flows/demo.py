"""The embedded default: synthetic data -> train -> backfill the score range -> a summary.

`make demo` runs this with Prefect's ephemeral API and a local store, so a
newcomer sees the whole pipeline work without any service to start.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import resolve_config
from flows.nightly import backfill_flow
from flows.train import train_flow
from schemas.config import default_config_path
from tasks.common import store_for
from tasks.versions import champion_ref


@flow(name="nightowl-demo", log_prints=True)
def demo_flow(config: str | None = None) -> dict[str, Any]:
    """Train on the synthetic fleet, then score every night of its score range."""
    config = config or str(default_config_path())
    training = train_flow(config)
    nights = backfill_flow(config)
    return {"training": training, "nights": nights}


def format_summary(result: dict[str, Any], config: str | None = None) -> str:
    """The short human summary `make demo` prints."""
    cfg = resolve_config(config)
    store = store_for(cfg)
    training, nights = result["training"], result["nights"]
    ing = training["ingestion"]
    lines = [
        f"nightowl demo — dataset '{cfg.name}'",
        f"  rows in: {ing['rows_in']}   validated: {ing['rows_validated']}   "
        f"quarantined: {ing['rows_quarantined']}",
        *(f"    quarantined: {b['reason']}" for b in ing["batches"] if b["status"] == "quarantined"),
        "  validation (labelled slice):",
        f"    {'family':<14}{'ROC-AUC':>9}{'PR-AUC':>9}{'F1':>7}   threshold (method)",
    ]
    for c in training["candidates"]:
        m, t = c["metrics"], c["threshold"]
        lines.append(
            f"    {c['family']:<14}{m['roc_auc']:>9.3f}{m['pr_auc']:>9.3f}{m['f1']:>7.3f}   "
            f"{t['threshold']:.4g} ({t['method']})"
        )
    champ = training["champion"]
    scored = [n for n in nights if n["status"] == "scored"]
    lines += [
        f"  champion: {champ['family']}/{champ['version']} "
        f"({champ['metric']}={champ['value']:.3f})",
        f"  nightly scoring: {len(scored)} nights, {sum(n['rows'] for n in scored)} rows, "
        f"{sum(n['anomalies'] for n in scored)} anomalous rows",
        f"  artifacts: {store.uri('')}",
        f"    model:  {store.uri(champion_ref(champ).key)}",
        f"    scores: {store.uri(f'scores/{cfg.name}/')}",
    ]
    return "\n".join(lines)
