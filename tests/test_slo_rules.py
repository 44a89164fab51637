"""The generated Prometheus rules (``mlcycle.project.slo_rules``): ``promtool check rules`` accepts them,
and ``promtool test rules`` runs them against series written here by hand, whose p99, error ratio,
availability, lag and freshness are known by construction, so each alert's firing time, labels and
annotations are worked out in the comments before promtool says them.

promtool comes from Debian's ``prometheus`` package, installed by ``make install`` (which ``make test``
runs first). Without it these tests fail, naming ``make install``: a skipped check of the rules would
let a broken rules file ship.

promtool's series notation: ``a+bxn`` is the n+1 values a, a+b, …, a+n·b, one per ``interval``
(1m here, from 0m); ``axn`` is a repeated n+1 times. Rules are evaluated every minute; an alert whose
condition first holds at t is pending, and fires (is listed) from t + ``for`` (5m) on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlcycle.project.config import ProjectConfig
from mlcycle.project.slo_rules import METRICS, RULES_FILE, RUNBOOKS, anchor, rules_yaml
from mlcycle.streaming.publisher import CONSUMER_GAUGES, CONSUMER_PREFIX

REPO = Path(__file__).resolve().parents[1]
# The objectives the tests hold the rules to: the defaults (p99 250 ms, server errors 1%,
# availability 99.9%, lag 10000 events, freshness 60 s, rates over 5m, alerts after 5m), availability
# over an hour instead of a day so a test's series stay short.
SLO = {"availability_window": "1h"}
JOB = 'job="shop", instance="10.0.0.7:3000"'  # the scrape's labels on every series
LABELS = {"job": "shop", "instance": "10.0.0.7:3000"}
RULE_LABELS = {"project": "shop"}
SERVICE_RUNBOOK = "docs/operations.md#runbook-service-not-ready--503s"
LATENCY_RUNBOOK = "docs/operations.md#runbook-slow-predictions-p99-latency"
STREAM_RUNBOOK = "docs/operations.md#runbook-stream-lag-or-stale-features"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: run `make install` (it installs Debian's prometheus package, which has "
            "promtool, as root with apt-get); tests/test_slo_rules.py checks the generated rules with it"
        )
    return path


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = ProjectConfig(project="shop", serving={"slo": SLO})
    path = tmp_path_factory.mktemp("slo") / "prometheus-rules.yml"
    path.write_text(rules_yaml(cfg))
    return path


def run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def promtool_test(promtool: str, rules: Path, tests: list[dict], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``promtool test rules`` on a test file written here: ``tests`` against ``rules``."""
    doc = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return run(promtool, "test", "rules", path)


def passes(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def series(name: str, values: str, **labels: str) -> dict:
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{JOB}{extra}}}", "values": values}


def alert(severity: str, annotations: dict, **labels: str) -> dict:
    return {"exp_labels": {**LABELS, **labels, **RULE_LABELS, "severity": severity}, "exp_annotations": annotations}


UP = series("up", "1x90")  # answered every scrape


def histogram(endpoint: str, per_minute: dict[str, int], minutes: int = 20) -> list[dict]:
    """A latency histogram whose buckets grow by ``per_minute`` (cumulative counts by ``le``) each minute."""
    name = "mlcycle_predict_seconds"
    out = [series(f"{name}_bucket", f"0+{n}x{minutes}", endpoint=endpoint, le=le) for le, n in per_minute.items()]
    return [*out, series(f"{name}_count", f"0+{per_minute['+Inf']}x{minutes}", endpoint=endpoint)]


# ----------------------------------------------------------------------------------------------- check


def test_promtool_accepts_the_generated_rules(promtool: str, rules: Path) -> None:
    result = run(promtool, "check", "rules", rules)
    passes(result)
    assert "SUCCESS: 12 rules found" in result.stdout, result.stdout
    groups = yaml.safe_load(rules.read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) == 8
    for rule in alerts:  # every alert: who it is for, how bad, what it is, where its runbook is
        assert set(rule["labels"]) == {"severity", "project"} and rule["labels"]["project"] == "shop", rule
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, rule
        assert rule["annotations"]["runbook_url"].startswith("docs/operations.md#"), rule
        assert "$value" in rule["annotations"]["description"] or rule["alert"].startswith("MlcycleService"), rule


def test_promtool_rejects_a_broken_rules_file(promtool: str, rules: Path, tmp_path: Path) -> None:
    """The check can fail: a PromQL syntax error (an unclosed parenthesis) and a ``for`` that is not a
    duration are each rejected, naming the problem."""
    text = rules.read_text()
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace('up{job="shop"} == 0', 'rate(up{job="shop"}[5m] == 0', 1))
    result = run(promtool, "check", "rules", broken)
    assert result.returncode != 0 and "parse error" in result.stdout + result.stderr, result.stdout + result.stderr
    broken.write_text(text.replace("for: 5m", "for: five minutes", 1))
    result = run(promtool, "check", "rules", broken)
    assert result.returncode != 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------- latency


def test_p99_latency_over_its_bound_fires_and_under_it_does_not(promtool: str, rules: Path, tmp_path: Path) -> None:
    """/predict: of 100 calls a minute, 90 within 0.1 s, 98 within 0.25 s, all 100 within 0.5 s. The
    p99 is the 99th call: between the 0.25 and 0.5 s edges, 1 of the 2 calls past 0.25 s, so
    histogram_quantile interpolates 0.25 + (0.5 - 0.25) · 1/2 = 0.375 s, over the 0.25 s bound.
    /predict_batch: all 50 calls a minute within 0.01 s: p99 = 0.01 · 0.99 = 0.0099 s, under it.
    The rates exist from 1m (two samples), so the alert is pending from 1m and fires at 6m, for
    /predict only, "375ms"."""
    slow = {"0.1": 90, "0.25": 98, "0.5": 100, "+Inf": 100}
    fast = {"0.01": 50, "0.1": 50, "0.25": 50, "0.5": 50, "+Inf": 50}
    annotations = {
        "summary": "p99 latency of /predict is 375ms",
        "description": "The p99 of /predict over 5m was 375ms, above the bound of 250 ms (serving.slo.p99_latency_ms).",
        "runbook_url": LATENCY_RUNBOOK,
    }
    test = {
        "interval": "1m",
        "input_series": [UP, *histogram("predict", slow), *histogram("predict_batch", fast)],
        "promql_expr_test": [
            {
                "expr": "job_endpoint:mlcycle_predict_seconds:p99_rate5m",
                "eval_time": "10m",
                "exp_samples": [
                    {
                        "labels": 'job_endpoint:mlcycle_predict_seconds:p99_rate5m{job="shop", endpoint="predict"}',
                        "value": 0.375,
                    },
                    {
                        "labels": "job_endpoint:mlcycle_predict_seconds:p99_rate5m"
                        '{job="shop", endpoint="predict_batch"}',
                        "value": 0.0099,
                    },
                ],
            },
            {
                # 100 + 50 calls a minute: 100/60 and 50/60 per second.
                "expr": 'job_endpoint:mlcycle_predict_seconds:rate5m{endpoint="predict"} * 60',
                "eval_time": "10m",
                "exp_samples": [{"labels": '{job="shop", endpoint="predict"}', "value": 100}],
            },
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "MlcycleLatencyP99High", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "MlcycleLatencyP99High",
                "exp_alerts": [
                    {
                        "exp_labels": {"job": "shop", "endpoint": "predict", **RULE_LABELS, "severity": "ticket"},
                        "exp_annotations": annotations,
                    }
                ],
            },
            {"eval_time": "10m", "alertname": "MlcycleErrorRatioHigh", "exp_alerts": []},  # no errors at all
            {"eval_time": "10m", "alertname": "MlcycleStreamLagHigh", "exp_alerts": []},  # no stream: no figures
        ],
    }
    passes(promtool_test(promtool, rules, [test], tmp_path))


def test_promtool_test_fails_on_a_wrong_expectation(promtool: str, rules: Path, tmp_path: Path) -> None:
    """The unit tests can fail: the same slow /predict expected to fire a minute early (5m) is a failure."""
    slow = {"0.1": 90, "0.25": 98, "0.5": 100, "+Inf": 100}
    test = {
        "interval": "1m",
        "input_series": [UP, *histogram("predict", slow)],
        "alert_rule_test": [
            {
                "eval_time": "5m",
                "alertname": "MlcycleLatencyP99High",
                "exp_alerts": [
                    {"exp_labels": {"job": "shop", "endpoint": "predict", **RULE_LABELS, "severity": "ticket"}}
                ],
            }
        ],
    }
    result = promtool_test(promtool, rules, [test], tmp_path)
    assert result.returncode != 0 and "MlcycleLatencyP99High" in result.stdout + result.stderr, result.stdout


# -------------------------------------------------------------------------------------------- errors


def test_server_errors_over_their_bound_fire_and_client_errors_do_not_count(
    promtool: str, rules: Path, tmp_path: Path
) -> None:
    """Job "shop" (/predict, 100 calls a minute): 2 answered 503 (unavailable) and 1 answered 500
    (server_error) a minute, and 40 answered 400 (validation). Server-side: 3 of 100 = 3%, over the
    1% bound, from 1m: fires at 6m, "3%". The 400s are the caller's: they change nothing.
    Job "quiet" (another project's service, not selected by these rules): 60 of 100 fail with 503:
    no alert for it, the rules read job "shop" only."""
    test = {
        "interval": "1m",
        "input_series": [
            UP,
            series("mlcycle_predict_seconds_count", "0+100x20", endpoint="predict"),
            series("mlcycle_errors_total", "0+2x20", reason="unavailable"),
            series("mlcycle_errors_total", "0+1x20", reason="server_error"),
            series("mlcycle_errors_total", "0+40x20", reason="validation"),
            series("mlcycle_errors_total", "0x20", reason="timeout"),
            {
                "series": 'mlcycle_predict_seconds_count{job="quiet", instance="q:3000", endpoint="predict"}',
                "values": "0+100x20",
            },
            {
                "series": 'mlcycle_errors_total{job="quiet", instance="q:3000", reason="unavailable"}',
                "values": "0+60x20",
            },
        ],
        "promql_expr_test": [
            {
                "expr": "job:mlcycle_server_errors:ratio_rate5m",
                "eval_time": "10m",
                "exp_samples": [{"labels": 'job:mlcycle_server_errors:ratio_rate5m{job="shop"}', "value": 0.03}],
            },
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "MlcycleErrorRatioHigh", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "MlcycleErrorRatioHigh",
                "exp_alerts": [
                    {
                        "exp_labels": {"job": "shop", **RULE_LABELS, "severity": "page"},
                        "exp_annotations": {
                            "summary": "3% of scoring calls fail on the service's side",
                            "description": "Server-side errors (503, 504, 500) were 3% of scoring calls over 5m, "
                            "above the bound of 1% (serving.slo.error_ratio).",
                            "runbook_url": SERVICE_RUNBOOK,
                        },
                    }
                ],
            },
        ],
    }
    # Under the bound: 0.5% server-side (1 503 in 200 calls a minute) beside 40% client errors.
    under = {
        "interval": "1m",
        "input_series": [
            UP,
            series("mlcycle_predict_seconds_count", "0+200x20", endpoint="predict"),
            series("mlcycle_errors_total", "0+1x20", reason="unavailable"),
            series("mlcycle_errors_total", "0+80x20", reason="validation"),
        ],
        "alert_rule_test": [{"eval_time": "15m", "alertname": "MlcycleErrorRatioHigh", "exp_alerts": []}],
    }
    passes(promtool_test(promtool, rules, [test, under], tmp_path))


# ------------------------------------------------------------------------------------- availability


def test_a_service_down_fires_down_and_availability(promtool: str, rules: Path, tmp_path: Path) -> None:
    """up is 1 for the scrapes at 0–29m (30 of them) and 0 from 30m. Down: up == 0 from 30m, fires
    at 35m. Availability over the last hour at 30m: 30 of 31 scrapes answered, 96.8%, under 99.9%:
    pending from 30m, fires at 35m, when 30 of 36 answered: 83.33% (humanizePercentage: 4 digits)."""
    test = {
        "interval": "1m",
        "input_series": [series("up", "1x29 0x19")],
        "promql_expr_test": [
            {
                "expr": "job:up:avg_over_time1h",
                "eval_time": "35m",
                "exp_samples": [{"labels": 'job:up:avg_over_time1h{job="shop"}', "value": 30 / 36}],
            },
        ],
        "alert_rule_test": [
            {"eval_time": "34m", "alertname": "MlcycleServiceDown", "exp_alerts": []},
            {
                "eval_time": "35m",
                "alertname": "MlcycleServiceDown",
                "exp_alerts": [
                    alert(
                        "page",
                        {
                            "summary": "mlcycle service 10.0.0.7:3000 is down",
                            "description": "Prometheus has not scraped /metrics of 10.0.0.7:3000 (job shop) for 5m: "
                            "the service is down or not answering.",
                            "runbook_url": SERVICE_RUNBOOK,
                        },
                    )
                ],
            },
            {"eval_time": "34m", "alertname": "MlcycleAvailabilityBelowObjective", "exp_alerts": []},
            {
                "eval_time": "35m",
                "alertname": "MlcycleAvailabilityBelowObjective",
                "exp_alerts": [
                    {
                        "exp_labels": {"job": "shop", **RULE_LABELS, "severity": "page"},
                        "exp_annotations": {
                            "summary": "mlcycle service available 83.33% of the last 1h",
                            "description": "Scrapes answered over the last 1h: 83.33%, under the objective of 99.9% "
                            "(serving.slo.availability).",
                            "runbook_url": SERVICE_RUNBOOK,
                        },
                    }
                ],
            },
            {"eval_time": "35m", "alertname": "MlcycleServiceNotScraped", "exp_alerts": []},  # it is scraped
        ],
    }
    passes(promtool_test(promtool, rules, [test], tmp_path))


def test_a_service_never_scraped_fires_not_scraped(promtool: str, rules: Path, tmp_path: Path) -> None:
    """No up series of job "shop" at all (another job's only): absent() holds from 0m, fires at 5m,
    labelled with the job it looked for."""
    test = {
        "interval": "1m",
        "input_series": [{"series": 'up{job="other", instance="o:3000"}', "values": "1x20"}],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "MlcycleServiceNotScraped", "exp_alerts": []},
            {
                "eval_time": "5m",
                "alertname": "MlcycleServiceNotScraped",
                "exp_alerts": [
                    {
                        "exp_labels": {"job": "shop", **RULE_LABELS, "severity": "page"},
                        "exp_annotations": {
                            "summary": "no mlcycle service is scraped (job shop)",
                            "description": "Prometheus has had no target of job shop for 5m: the service is not "
                            "running or not in the scrape config.",
                            "runbook_url": SERVICE_RUNBOOK,
                        },
                    }
                ],
            },
        ],
    }
    passes(promtool_test(promtool, rules, [test], tmp_path))


# -------------------------------------------------------------------------------------------- stream


def test_stream_lag_freshness_and_a_stalled_consumer(promtool: str, rules: Path, tmp_path: Path) -> None:
    """Lag: 100 events for 0–9m, 20000 from 10m (over 10000): fires at 15m, "20000".
    Freshness p99: 500 ms for 0–19m, 90 s from 20m (over 60 s): fires at 25m, "90000 ms".
    The consumer records its figures every minute until 20m (updated = t in seconds, 0…1200), then
    nothing: time() - 1200 is 60 s at 21m (not over 60), 120 s at 22m, with events waiting (lag > 0):
    pending from 22m, fires at 27m, when the figures are 27·60 - 1200 = 420 s old: "7m 0s"."""
    lag = {
        "summary": "20000 events wait for the stream consumer",
        "description": "The consumer group is 20000 events behind the stream, above the bound of 10000 "
        "(serving.slo.stream_lag_max).",
        "runbook_url": STREAM_RUNBOOK,
    }
    freshness = {
        "summary": "online features are 90000 ms behind their events (p99)",
        "description": "The p99 from an event's time to its online write was 90000 ms, above the bound of 60 s "
        "(serving.slo.freshness_max_s).",
        "runbook_url": STREAM_RUNBOOK,
    }
    stalled = {
        "summary": "the stream consumer has recorded nothing for 7m 0s while events wait",
        "description": "Events wait in the stream and the consumer last recorded its figures 7m 0s ago, longer "
        "than 60 s (serving.slo.freshness_max_s): it is stopped or stuck, and online features go stale.",
        "runbook_url": STREAM_RUNBOOK,
    }
    page, ticket = (
        {"job": "shop", **RULE_LABELS, "severity": "page"},
        {"job": "shop", **RULE_LABELS, "severity": "ticket"},
    )
    test = {
        "interval": "1m",
        "input_series": [
            UP,
            series("mlcycle_stream_consumer_lag_events", "100x9 20000x20"),
            series("mlcycle_stream_consumer_freshness_p99_ms", "500x19 90000x10"),
            series("mlcycle_stream_consumer_updated_timestamp_seconds", "0+60x20 1200x9"),
        ],
        "alert_rule_test": [
            {"eval_time": "14m", "alertname": "MlcycleStreamLagHigh", "exp_alerts": []},
            {
                "eval_time": "15m",
                "alertname": "MlcycleStreamLagHigh",
                "exp_alerts": [{"exp_labels": ticket, "exp_annotations": lag}],
            },
            {"eval_time": "24m", "alertname": "MlcycleStreamFreshnessHigh", "exp_alerts": []},
            {
                "eval_time": "25m",
                "alertname": "MlcycleStreamFreshnessHigh",
                "exp_alerts": [{"exp_labels": ticket, "exp_annotations": freshness}],
            },
            {"eval_time": "20m", "alertname": "MlcycleStreamConsumerStalled", "exp_alerts": []},
            {"eval_time": "26m", "alertname": "MlcycleStreamConsumerStalled", "exp_alerts": []},
            {
                "eval_time": "27m",
                "alertname": "MlcycleStreamConsumerStalled",
                "exp_alerts": [{"exp_labels": page, "exp_annotations": stalled}],
            },
        ],
    }
    passes(promtool_test(promtool, rules, [test], tmp_path))


# ------------------------------------------------------------------------------- names and runbooks


def test_the_rules_read_metrics_the_service_exports() -> None:
    """Every metric the rules read is one the service's /metrics has: a histogram or counter named in
    mlcycle/service.py (prometheus_client adds _bucket/_count to a histogram, _total to a counter), or
    one of the stream consumer's figures; and the server-side reasons are the service's."""
    source = (REPO / "src/mlcycle/service.py").read_text()
    histograms = set(re.findall(r'Histogram\(\s*name="(\w+)"', source))
    counters = set(re.findall(r'Counter\(\s*name="(\w+)"', source))
    exported = {f"{h}_{s}" for h in histograms for s in ("bucket", "count", "sum")} | {f"{c}_total" for c in counters}
    exported |= {CONSUMER_PREFIX + name for name, _ in CONSUMER_GAUGES.values()}
    assert set(METRICS) <= exported, set(METRICS) - exported
    assert (
        re.search(r'503: "unavailable".*504: "timeout"', source, re.S)
        and 'SERVER_ERROR = "client_error", "server_error"' in source
    )


def test_every_runbook_an_alert_links_is_a_section_of_the_operations_doc(rules: Path) -> None:
    headings = {anchor(line.lstrip("#")) for line in (REPO / "docs/operations.md").read_text().splitlines()
                if line.startswith("#")}  # fmt: skip
    assert {anchor(h) for h in RUNBOOKS.values()} <= headings
    linked = set(re.findall(r"runbook_url: docs/operations\.md#(\S+)", rules.read_text()))
    assert linked == {anchor(h) for h in RUNBOOKS.values()}
    assert anchor("Runbook: service not ready / 503s") == "runbook-service-not-ready--503s"  # GitHub's anchor


def test_the_bounds_come_from_the_config(tmp_path: Path, promtool: str) -> None:
    """Other objectives, other job: the rules say them, and promtool still accepts the file."""
    slo = {"p99_latency_ms": 100, "error_ratio": 0.005, "availability": 0.99, "window": "10m", "alert_for": "2m",
           "stream_lag_max": 500, "freshness_max_s": 2.5, "job": 'svc"1'}  # fmt: skip
    text = rules_yaml(ProjectConfig(project="p", serving={"slo": slo}), runbook_base="https://example.org/ops.md")
    for expected in ('> 0.1\n', "> 0.005\n", "< 0.99\n", "> 500\n", "> 2500\n", "[10m]", "for: 2m",
                     'job="svc\\"1"', "runbook_url: https://example.org/ops.md#runbook-"):  # fmt: skip
        assert expected in text, expected
    path = tmp_path / "rules.yml"
    path.write_text(text)
    passes(run(promtool, "check", "rules", path))
    assert RULES_FILE.as_posix() == "monitoring/prometheus-rules.yml"


def test_the_reference_project_has_its_rules_as_generated(promtool: str) -> None:
    """monitoring/prometheus-rules.yml of the reference project is the rendering of its mlcycle.yaml."""
    from mlcycle.project.config import load_config

    committed = REPO / RULES_FILE
    assert committed.read_text() == rules_yaml(load_config(REPO / "mlcycle.yaml")), (
        f"{RULES_FILE} differs from serving.slo's rules: run `uv run mlcycle slo rules --out {RULES_FILE}`"
    )


def test_init_writes_the_rules_and_promtool_accepts_them(promtool: str, tmp_path: Path) -> None:
    from tests.test_init import ROLES, make_table

    from mlcycle.project.scaffold import init_project

    table = tmp_path / "orders.parquet"
    make_table(600).to_parquet(table, index=False)
    result = init_project(tmp_path / "shop", table, **ROLES)
    path = result.directory / RULES_FILE
    assert path in result.written
    assert 'up{job="shop"} == 0' in path.read_text()
    passes(run(promtool, "check", "rules", path))
