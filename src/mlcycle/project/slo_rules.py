"""The project's Prometheus rules (``monitoring/prometheus-rules.yml``) from ``serving.slo``, rendered from
the package template ``prometheus-rules.yml.j2``: ``mlcycle init`` writes them into a new project and
``mlcycle slo rules`` prints or writes them for an existing one. Pure: the config in, the text out.

They watch what the service's ``/metrics`` exposes (``mlcycle.service``; the stream consumer's figures
come through it too, ``mlcycle.streaming.publisher.StreamFigures``) and Prometheus' own ``up``:

- recording rules, per ``serving.slo.window``: scoring calls per second and the p99 latency per
  endpoint (``histogram_quantile`` over the rate of ``mlcycle_predict_seconds_bucket``), and the share
  of calls answered with a server-side error; over ``availability_window``, the share of answered
  scrapes;
- alerting rules, each with labels ``severity`` and ``project`` and annotations ``summary``,
  ``description`` (naming the value and its bound) and ``runbook_url`` (a section of
  docs/operations.md): the service down or not scraped at all, availability under its objective,
  the error ratio or the p99 latency over its bound, the stream's lag or freshness over its bound,
  and events waiting while the consumer records nothing.

``promtool check rules`` accepts the file and ``promtool test rules`` runs its alerts against series
written by hand (tests/test_slo_rules.py). The metric names below are the service's: a test holds
them equal to ``mlcycle.service``'s and the consumer's.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlcycle.project.config import ProjectConfig
from mlcycle.project.templates import render

RULES_FILE = Path("monitoring/prometheus-rules.yml")
RULES_TEMPLATE = "prometheus-rules.yml.j2"
RUNBOOK_BASE = "docs/operations.md"  # what each alert's runbook_url starts with, before "#<section>"

# What the service's /metrics calls them (mlcycle.service, mlcycle.streaming.publisher).
LATENCY = "mlcycle_predict_seconds"  # histogram, label endpoint: predict | predict_batch
ERRORS = "mlcycle_errors_total"  # counter, label reason
SERVER_ERROR_REASONS = ("unavailable", "timeout", "server_error")  # 503, 504, 500: the service's errors
STREAM_LAG = "mlcycle_stream_consumer_lag_events"
STREAM_FRESHNESS = "mlcycle_stream_consumer_freshness_p99_ms"
STREAM_UPDATED = "mlcycle_stream_consumer_updated_timestamp_seconds"
METRICS = (f"{LATENCY}_bucket", f"{LATENCY}_count", ERRORS, STREAM_LAG, STREAM_FRESHNESS, STREAM_UPDATED)

# Each alert's runbook: a section of docs/operations.md by its heading's anchor (GitHub's rule).
RUNBOOKS = {
    "service": "Runbook: service not ready / 503s",
    "latency": "Runbook: slow predictions (p99 latency)",
    "stream": "Runbook: stream lag or stale features",
}


def anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def _promql_string(text: str) -> str:
    """A PromQL string literal (Go's double-quoted escapes, which JSON's are for ASCII)."""
    return json.dumps(text, ensure_ascii=True)


def _number(x: float) -> str:
    """A bound as PromQL and people read it: no trailing ``.0``, no exponent."""
    return format(x, "f").rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _prometheus_template(text: str) -> str:
    """A Prometheus template expression, ``{{ text }}``: written by a function, as Jinja reads ``{{`` itself."""
    return "{{ " + text + " }}"


def rules_yaml(cfg: ProjectConfig, runbook_base: str = RUNBOOK_BASE) -> str:
    """The rules file's text for the project; ``runbook_base``: where the runbooks are (a path or a
    URL to docs/operations.md), each alert linking ``<runbook_base>#<section>``."""
    slo = cfg.serving.slo
    job = slo.job or cfg.project
    return render(
        RULES_TEMPLATE,
        project=cfg.project,
        job=job,
        selector=f"job={_promql_string(job)}",
        slo=slo,
        p99_seconds=_number(slo.p99_latency_ms / 1000),
        p99_ms=_number(slo.p99_latency_ms),
        error_ratio=_number(slo.error_ratio),
        error_percent=_number(round(slo.error_ratio * 100, 6)),
        availability=_number(slo.availability),
        availability_percent=_number(round(slo.availability * 100, 6)),
        stream_lag_max=slo.stream_lag_max,
        freshness_ms=_number(slo.freshness_max_s * 1000),
        freshness_s=_number(slo.freshness_max_s),
        server_errors="|".join(SERVER_ERROR_REASONS),
        latency=LATENCY,
        errors=ERRORS,
        stream_lag=STREAM_LAG,
        stream_freshness=STREAM_FRESHNESS,
        stream_updated=STREAM_UPDATED,
        runbook={key: f"{runbook_base}#{anchor(heading)}" for key, heading in RUNBOOKS.items()},
        prom=_prometheus_template,
    )
