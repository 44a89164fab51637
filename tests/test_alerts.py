"""Alerts (mlcycle.ops.alerts): the config refuses what cannot be delivered, every message names the
event, the runbook section and the command to act, `alerts test` reaches a real HTTP receiver, and
on a real Prefect server a route fires only once its persistence count is reached, then stays quiet
for the rest of its window. (The whole chain from a real monitor run: tests/test_retraining.py.)"""

from __future__ import annotations

import time

import pytest

from mlcycle.ops import alerts
from mlcycle.project.config import ConfigError, ProjectConfig
from servers import WebhookReceiver

pytestmark = pytest.mark.timeout(300)
URL_ENV = "MLCYCLE_TEST_ALERT_URL"


def project(tmp_path, routes: list[dict], name: str = "alerting") -> ProjectConfig:
    cfg = ProjectConfig.model_validate({
        "project": name, "model": {"name": f"{name}-model"},
        "alerts": {"channels": {"oncall": {"type": "webhook", "url_env": URL_ENV}}, "routes": routes},
    })  # fmt: skip
    cfg.root = tmp_path
    return cfg


@pytest.mark.parametrize(
    ("alerts_section", "message"),
    [
        ({"routes": [{"when": ["drift"], "to": ["pager"]}]}, "pager: no such channel"),
        ({"channels": {"x": {"type": "webhook", "url_env": "x"}}, "routes": [{"when": ["dirft"], "to": ["x"]}]},
         "unknown alert source dirft"),
        ({"channels": {"x": {"type": "webhook", "url_env": "x"}}, "routes": [{"when": ["drift", "flow_failed"],
          "to": ["x"]}]}, "separate routes"),
        ({"channels": {"x": {"type": "webhook", "url_env": "https://hooks.example/secret"}}}, "not an environment"),
        ({"channels": {"x": {"type": "sms", "url_env": "X"}}}, "webhook"),
        ({"channels": {"x": {"type": "webhook", "url_env": "X"}}, "routes": [{"when": ["drift"], "to": ["x"],
          "within": "soon"}]}, "soon"),
    ],
)  # fmt: skip
def test_the_config_refuses_routes_that_cannot_be_delivered(alerts_section: dict, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        ProjectConfig.model_validate({"alerts": alerts_section})


def test_a_message_names_the_event_evidence_runbook_and_command(tmp_path) -> None:
    cfg = project(tmp_path, [{"when": ["drift", "decay"], "to": ["oncall"], "persist": 3, "within": "1d"},
                             {"when": ["retraining_blocked"], "to": ["oncall"]}])  # fmt: skip
    subject, body = alerts.message(cfg, cfg.alerts.routes[0])
    assert "{{ event.event }}" in subject and "[page]" in subject
    assert "docs/operations.md#runbook-drift-or-decay-alert" in body
    assert "Act: mlcycle status" in body and "Persisted: 3 within 1d" in body
    assert '{{ event.resource["mlcycle.champion_version"] }}' in body  # the version, filled in by Prefect
    assert "{{ event.payload.drifted_features }}" in body and "{{ event.payload.decay }}" in body
    _, blocked = alerts.message(cfg, cfg.alerts.routes[1])
    assert "#runbook-retraining-blocked-broken-upstream" in blocked and "mlcycle approve RUN" in blocked
    trigger = alerts.trigger(cfg, cfg.alerts.routes[0])
    assert trigger.expect == {"mlcycle.drift.detected", "mlcycle.performance.decayed"}
    assert trigger.threshold == 3 and trigger.within.total_seconds() == 86400
    assert trigger.match.model_dump() == {"prefect.resource.id": "mlcycle.model.alerting-model"}


def test_a_channel_without_its_url_is_named_and_alerts_test_reaches_a_receiver(tmp_path, monkeypatch) -> None:
    cfg = project(tmp_path, [])
    monkeypatch.delenv(URL_ENV, raising=False)
    with pytest.raises(alerts.AlertError, match=f"{URL_ENV} is not set"):
        alerts.make_block(cfg, "oncall", cfg.alerts.channels["oncall"])
    receiver = WebhookReceiver()
    try:
        monkeypatch.setenv(URL_ENV, receiver.url)
        assert alerts.send_test(cfg) == {"oncall": "sent"}
        [got] = receiver.wait_for(1, 30)
        assert got["subject"] == "mlcycle alerting: test alert to oncall" and got["project"] == "alerting"
        receiver.close()
        outcome = alerts.send_test(cfg)["oncall"]  # the receiver is gone: a failure, by name, not a hang
        assert outcome.startswith("failed:"), outcome
    finally:
        receiver.close()


def test_on_a_prefect_server_a_route_waits_for_its_count_then_stays_quiet(tmp_path, monkeypatch, prefect_server):
    """persist 2 within 1h: the first event sends nothing, the second sends one message, two more
    (inside the same window, enough for a second count) none. Events are emitted by hand here, to the
    same resource the monitor uses; Prefect's trigger service does the counting."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    receiver = WebhookReceiver()
    monkeypatch.setenv(URL_ENV, receiver.url)
    cfg = project(tmp_path, [{"when": ["drift"], "to": ["oncall"], "persist": 2, "within": "1h"}],
                  name=f"alerting{int(time.time() * 1000) % 10**8}")  # fmt: skip
    try:
        synced = alerts.sync(cfg)
        assert synced.automations == [f"{alerts.prefix(cfg)}-alert-0-drift"]
        time.sleep(2)  # the trigger service loads new automations on its next refresh

        def drift(version: str) -> None:
            emit_event(event="mlcycle.drift.detected",
                       resource={"prefect.resource.id": f"mlcycle.model.{cfg.model.name}",
                                 "prefect.resource.name": cfg.model.name, "mlcycle.champion_version": version},
                       payload={"drifted_features": {"amount": ["psi 0.31"]}, "rows": 1234})  # fmt: skip
            EventsWorker.drain_all()

        drift("7")
        assert receiver.wait_for(1, 15) == []  # one occurrence of two: nothing yet
        drift("7")
        [message] = receiver.wait_for(1, 90)
        assert message["project"] == cfg.project
        body = message["body"]
        assert "mlcycle.drift.detected" in body and "Version: v7" in body and "psi 0.31" in body
        assert "#runbook-drift-or-decay-alert" in body and "Act: mlcycle status" in body
        drift("7")
        drift("7")  # two more: the count is reached again, but inside the window it stays quiet
        assert len(receiver.wait_for(2, 20)) == 1
        # A second sync replaces, not duplicates; remove takes them away.
        assert alerts.sync(cfg).automations == synced.automations
        assert alerts.remove(cfg) == synced.automations
    finally:
        alerts.remove(cfg)
        receiver.close()


def test_routes_read_from_yaml_as_written(tmp_path) -> None:
    """YAML 1.1 reads a bare ``on`` as true: the route's key is ``when``, and the reference file loads."""
    from mlcycle.project.config import load_config

    (tmp_path / "mlcycle.yaml").write_text(
        "alerts:\n  channels: {oncall: {type: webhook, url_env: ONCALL_URL}}\n"
        "  routes:\n    - {when: [drift, decay], to: [oncall], persist: 3, within: 3d}\n"
    )
    (tmp_path / "feature_repo").mkdir()
    route = load_config(tmp_path / "mlcycle.yaml").alerts.routes[0]
    assert (route.when, route.persist, route.within) == (["drift", "decay"], 3, "3d")
    from conftest import REPO_ROOT

    reference = load_config(REPO_ROOT / "mlcycle.yaml").alerts
    assert reference.channels["oncall"].url_env == "MLCYCLE_ONCALL_URL" and len(reference.routes) == 3
