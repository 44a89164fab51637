"""The ``backup`` flow: the scheduled backup of ``backup`` in mlcycle.yaml (mlcycle.ops.backup.scheduled_backup),
logged and kept as a Prefect artifact. Scheduled daily by the generated prefect.yaml.

It runs ``mlcycle backup``'s own code, which is in ``mlcycle.ops`` (layer 10): so this one module of
``mlcycle.flows`` stands in the ``ops`` layer (tests/test_layers.py, docs/architecture.md). Nothing
below imports it; :func:`mlcycle.flows.load_flow` finds it by name.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle.ops import backup as backups
from mlcycle.project.config import DEFAULT_CONFIG_NAME, load_config


@flow(name="backup", log_prints=True)
def backup(config: str | None = None) -> dict[str, Any]:
    """Back the project up into ``backup.dest/<UTC stamp>/`` and keep the newest ``backup.keep``;
    without ``backup.dest``, nothing is written and the status is "not configured"."""
    logger = get_run_logger()
    cfg = load_config(config)
    name = Path(config).name if config and Path(config).suffix in (".yaml", ".yml") else DEFAULT_CONFIG_NAME
    result = backups.scheduled_backup(cfg, datetime.now(UTC), name, out=logger.info)
    if result.status == "done":
        logger.info(result.message)
        lines = [result.message, *(f"removed {p}" for p in result.pruned)]
    else:
        logger.warning(result.message)
        lines = [result.message]
    create_markdown_artifact("\n".join(f"- {line}" for line in lines), key="backup",
                             description=f"scheduled backup of project {cfg.project}: {result.status}")  # fmt: skip
    return result.as_dict()


if __name__ == "__main__":
    print(backup(sys.argv[1] if len(sys.argv) > 1 else None))
