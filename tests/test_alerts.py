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


def _channel(tmp_path, kind: str) -> ProjectConfig:
    channels = {"chat": {"type": kind, "url_env": URL_ENV}}
    cfg = ProjectConfig.model_validate(
        {"project": "alerting", "model": {"name": "m"}, "alerts": {"channels": channels}}
    )
    cfg.root = tmp_path
    return cfg


def test_discord_and_mattermost_urls_become_their_blocks_fields_and_a_bad_one_is_named_not_echoed(
    tmp_path, monkeypatch
) -> None:
    discord = _channel(tmp_path, "discord")
    monkeypatch.setenv(URL_ENV, "https://discord.com/api/webhooks/123456789/Ab-c_DEFsecret")
    block = alerts.make_block(discord, "chat", discord.alerts.channels["chat"])
    assert block.webhook_id.get_secret_value() == "123456789"
    assert block.webhook_token.get_secret_value() == "Ab-c_DEFsecret"
    mattermost = _channel(tmp_path, "mattermost")
    monkeypatch.setenv(URL_ENV, "https://chat.example.org/team/hooks/xyzTOKEN42")
    block = alerts.make_block(mattermost, "chat", mattermost.alerts.channels["chat"])
    assert (block.hostname, block.port, block.secure, block.path) == ("chat.example.org", 443, True, "/team")
    assert block.token.get_secret_value() == "xyzTOKEN42"
    for cfg, bad in ((discord, "https://discord.com/channels/1/tok3nSECRET"),
                     (mattermost, "https://chat.example.org/tok3nSECRET")):  # fmt: skip
        monkeypatch.setenv(URL_ENV, bad)
        with pytest.raises(alerts.AlertError, match=f"{URL_ENV} is not a") as caught:
            alerts.make_block(cfg, "chat", cfg.alerts.channels["chat"])
        assert "tok3nSECRET" not in str(caught.value)


def test_a_mattermost_channel_is_reached_and_a_failure_does_not_show_the_token(tmp_path, monkeypatch) -> None:
    cfg = _channel(tmp_path, "mattermost")
    receiver = WebhookReceiver()
    try:
        monkeypatch.setenv(URL_ENV, receiver.url.removesuffix("/hook") + "/hooks/mmTOKENsecret9")
        assert alerts.send_test(cfg) == {"chat": "sent"}
        [got] = receiver.wait_for(1, 30)
        assert receiver.paths == ["/hooks/mmTOKENsecret9"] and "A test of channel chat" in got["text"]
        receiver.close()
        outcome = alerts.send_test(cfg)["chat"]  # apprise answers False, not an error: still a failure
        assert outcome.startswith("failed:") and "mmTOKENsecret9" not in outcome, outcome
    finally:
        receiver.close()


def test_a_webhook_url_is_kept_secret_in_the_block_and_out_of_errors(tmp_path, monkeypatch) -> None:
    cfg = project(tmp_path, [])
    receiver = WebhookReceiver()
    try:
        url = receiver.url + "/whTOKENsecret7"
        monkeypatch.setenv(URL_ENV, url)
        block = alerts.make_block(cfg, "oncall", cfg.alerts.channels["oncall"])
        assert "whTOKENsecret7" not in block.model_dump_json()  # what a saved block document shows
        assert alerts.send_test(cfg) == {"oncall": "sent"} and receiver.paths == ["/hook/whTOKENsecret7"]
        receiver.close()
        outcome = alerts.send_test(cfg)["oncall"]
        assert outcome.startswith("failed:") and "whTOKENsecret7" not in outcome, outcome
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
        # A second sync replaces, not duplicates; remove takes them away, and only them: not those of a
        # project whose name starts like this one's, nor one named like ours but not tagged as ours.
        neighbour = project(tmp_path, [{"when": ["drift"], "to": ["oncall"]}], name=f"{cfg.project}-alert")
        assert alerts.sync(neighbour).automations[0].startswith(f"{alerts.prefix(cfg)}-alert-")
        from prefect import get_client
        from prefect.events.actions import DoNothing
        from prefect.events.schemas.automations import AutomationCore

        lookalike = f"{alerts.prefix(cfg)}-alert-9-drift"
        with get_client(sync_client=True) as client:
            client.create_automation(AutomationCore(name=lookalike, trigger=alerts.trigger(cfg, cfg.alerts.routes[0]),
                                                    actions=[DoNothing()]))  # fmt: skip
            # A duplicate of ours (two syncs that raced): the next sync leaves one.
            client.create_automation(AutomationCore(name=synced.automations[0], tags=[alerts.TAG, cfg.project],
                                                    trigger=alerts.trigger(cfg, cfg.alerts.routes[0]),
                                                    actions=[DoNothing()]))  # fmt: skip
        assert alerts.sync(cfg).automations == synced.automations
        with get_client(sync_client=True) as client:
            assert [a.name for a in client.read_automations()].count(synced.automations[0]) == 1
        assert alerts.remove(cfg) == synced.automations
        with get_client(sync_client=True) as client:
            left = {a.name for a in client.read_automations()}
        assert lookalike in left and alerts.remove(neighbour) == [f"{alerts.prefix(neighbour)}-alert-0-drift"]
    finally:
        alerts.remove(cfg)
        receiver.close()


def test_on_a_prefect_server_a_flow_route_counts_failed_runs_per_deployment(tmp_path, monkeypatch, prefect_server):
    """persist 2: two failed runs of one deployment page once; one failed run of another does not."""
    import uuid

    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    receiver = WebhookReceiver()
    monkeypatch.setenv(URL_ENV, receiver.url)
    cfg = project(tmp_path, [{"when": ["flow_failed"], "to": ["oncall"], "persist": 2, "within": "1h"}],
                  name=f"flows{int(time.time() * 1000) % 10**8}")  # fmt: skip
    try:
        alerts.sync(cfg)
        time.sleep(2)  # the trigger service loads new automations on its next refresh

        def failed(deployment: uuid.UUID) -> None:
            run = uuid.uuid4()
            resource = {"prefect.resource.id": f"prefect.flow-run.{run}", "prefect.resource.name": f"run-{run}"}
            role = "prefect.resource.role"
            related = [{"prefect.resource.id": f"prefect.deployment.{deployment}", role: "deployment"},
                       {"prefect.resource.id": f"prefect.tag.{cfg.project}", role: "tag"}]  # fmt: skip
            emit_event(event="prefect.flow-run.Failed", resource=resource, related=related)
            EventsWorker.drain_all()

        monitor, backup = uuid.uuid4(), uuid.uuid4()
        failed(monitor)
        failed(backup)
        assert receiver.wait_for(1, 15) == []  # one failure each: nothing yet
        failed(monitor)
        [message] = receiver.wait_for(1, 90)
        assert "prefect.flow-run.Failed" in message["body"] and "#runbook-service-not-ready" in message["body"]
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
