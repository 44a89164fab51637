"""The ``retention`` flow: each sink expired by ``privacy.retention_days`` (mlcycle.monitoring.retention),
logged with counts and kept as a Prefect artifact. Scheduled daily by the generated prefect.yaml."""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle.monitoring import retention as sinks
from mlcycle.project.config import load_config


@flow(name="retention", log_prints=True)
def retention(config: str | None = None) -> dict[str, Any]:
    """Remove what each sink keeps past its retention; what was removed and kept, per sink."""
    logger = get_run_logger()
    cfg = load_config(config)
    results = sinks.run_retention(cfg)
    lines = [r.line() for r in results]
    for line in lines:
        logger.info(line)
    create_markdown_artifact("\n".join(f"- {line}" for line in lines), key="retention",
                             description=f"retention of project {cfg.project}")  # fmt: skip
    return {"lines": lines, "sinks": sinks.as_dict(results)}


if __name__ == "__main__":
    print(retention(sys.argv[1] if len(sys.argv) > 1 else None))
