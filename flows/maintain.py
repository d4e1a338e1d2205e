"""Table maintenance: compact and vacuum a dataset's Delta tables, sweep staged parts.

Scheduled weekly (infra/prefect.yaml, `nightowl serve`); safe while nights and
ingestions run: compaction is a Delta commit like any other, and vacuum only removes
files no snapshot inside the retention window names.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import resolve_config
from tasks.nightly.maintain import maintain_table, sweep_staging, table_keys


@flow(name="nightowl-maintain-tables")
def maintain_flow(config: str | None = None) -> dict[str, Any]:
    """Compact + vacuum every table of the dataset; remove stale staged parts."""
    cfg = resolve_config(config)
    tables = [maintain_table(cfg, key) for key in table_keys(cfg)]
    return {"tables": tables, "staged_removed": sweep_staging(cfg)}
