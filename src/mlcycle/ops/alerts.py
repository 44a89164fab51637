"""Alerts that reach people: ``alerts:`` in mlcycle.yaml as Prefect notification blocks and automations.

mlcycle's monitor and retraining flows already emit events (``mlcycle.drift.detected``,
``mlcycle.performance.decayed``, ``mlcycle.retraining.blocked``) and Prefect emits its own for every
flow run's state. Delivery is Prefect's job, not a loop of ours: each channel becomes one of
Prefect's notification blocks (the custom webhook block, or Slack / Teams / Discord / Mattermost,
which go through apprise), and each route becomes an automation — a reactive ``EventTrigger`` on the
route's events for this project's model (or its flows), counted per model (``for_each``), firing
once ``persist`` occurrences fall within ``within``, with a ``SendNotification`` action whose body
names the event, its evidence, the version, the runbook section and the command to act. The server
sends it asynchronously, so a channel that is down never holds up monitoring.

Prefect's reactive trigger fires as soon as the count is reached and then waits out the rest of its
window before it can fire again: that window is the route's quiet period too, and no duplicate of
the same condition is sent inside it. The windows are fixed blocks, not sliding: a window opens at
the first matching event and closes ``within`` later, so "3 within 3d" means 3 events in the 3
days after the first one; 2 late in one block and 1 early in the next do not fire. Flow-run routes
count per deployment (a run fails once; per run a count above 1 would never be reached).

Everything mlcycle creates is named ``mlcycle-<project>-…`` and tagged ``mlcycle`` and the project;
``sync`` makes the server hold exactly what the config says (it updates in place, creates what is
new, then deletes its own leftovers, never anything else).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mlcycle.project.aggregations import parse_window
from mlcycle.project.config import ALERT_SOURCES, AlertChannelSpec, AlertRouteSpec, ProjectConfig
from mlcycle.project.templates import render

TAG = "mlcycle"
# The runbook section and the command that acts on each source (docs/operations.md anchors).
RUNBOOKS = {
    "drift": ("runbook-drift-or-decay-alert", "mlcycle status; the retrain run started by itself: mlcycle history"),
    "decay": ("runbook-drift-or-decay-alert", "mlcycle status; the retrain run started by itself: mlcycle history"),
    "estimated_decay": ("runbook-estimated-decay-no-labels-yet",
                        "mlcycle status; read the summary's estimate beside the matured windows; retrain by hand "
                        "(mlcycle retrain) if the inputs explain it"),
    "kpi": ("runbook-business-kpi-breached",
            "mlcycle status; read the summary's Business KPIs table beside the matured windows' recall"),
    "retraining_blocked": ("runbook-retraining-blocked-broken-upstream",
                           "mlcycle blocked, then mlcycle approve RUN --note … or mlcycle reject RUN --note …"),
    "flow_failed": ("runbook-service-not-ready--503s", "prefect flow-run logs RUN_ID; mlcycle status"),
    "flow_paused": ("runbook-canary-outcomes", "mlcycle approve VERSION --note … or mlcycle reject VERSION --note …"),
}  # fmt: skip
KINDS = {"drift": "monitor", "decay": "monitor", "estimated_decay": "monitor", "kpi": "monitor",
         "retraining_blocked": "blocked"}  # fmt: skip


class AlertError(RuntimeError):
    """The alert configuration cannot be put on the server as it is (a channel's URL is missing)."""


@dataclass(frozen=True)
class Synced:
    blocks: list[str]
    automations: list[str]
    removed: list[str]


def prefix(cfg: ProjectConfig) -> str:
    return f"mlcycle-{cfg.project}".lower().replace("_", "-")


def block_name(cfg: ProjectConfig, channel: str) -> str:
    return f"{prefix(cfg)}-{channel}".lower().replace("_", "-")


def automation_name(cfg: ProjectConfig, index: int, route: AlertRouteSpec) -> str:
    return f"{prefix(cfg)}-alert-{index}-{'-'.join(route.when)}"


def channel_url(name: str, spec: AlertChannelSpec) -> str:
    url = os.environ.get(spec.url_env, "").strip()
    if not url:
        raise AlertError(f"alert channel {name}: {spec.url_env} is not set; export it with the channel's URL")
    return url


def _url_parts(name: str, spec: AlertChannelSpec, url: str, form: str, pattern: str) -> re.Match[str]:
    found = re.fullmatch(pattern, url)
    if found is None:  # the URL holds the channel's token: named by its variable, never echoed
        raise AlertError(f"alert channel {name}: {spec.url_env} is not a {spec.type} webhook URL ({form})")
    return found


def make_block(cfg: ProjectConfig, name: str, spec: AlertChannelSpec) -> Any:
    """The Prefect notification block for a channel (not saved). The URL carries the channel's
    token, so it goes only into the blocks' secret fields: the custom webhook's URL is a template
    filled from its ``secrets``, Discord's and Mattermost's blocks take the URL's parts."""
    from prefect.blocks import notifications as n

    url = channel_url(name, spec)
    if spec.type == "webhook":
        payload = {"subject": "{{subject}}", "body": "{{body}}", "project": cfg.project, "channel": name}
        return n.CustomWebhookNotificationBlock(
            name=block_name(cfg, name),
            url="{{channel_url}}",
            secrets={"channel_url": url},
            json_data=payload,
            timeout=10,
        )
    if spec.type == "discord":
        found = _url_parts(name, spec, url, "https://discord.com/api/webhooks/ID/TOKEN",
                           r"https://(?:\w+\.)?discord(?:app)?\.com/api/webhooks/(\d+)/([\w-]+)/?")  # fmt: skip
        return n.DiscordWebhook(webhook_id=found[1], webhook_token=found[2])
    if spec.type == "mattermost":
        found = _url_parts(name, spec, url, "http(s)://HOST[:PORT][/PATH]/hooks/TOKEN",
                           r"(https?)://([^/:?#]+)(?::(\d+))?(/[^?#]*)?/hooks/([\w-]+)/?")  # fmt: skip
        secure = found[1] == "https"
        port = int(found[3]) if found[3] else (443 if secure else 80)
        return n.MattermostWebhook(hostname=found[2], port=port, secure=secure, path=found[4] or None, token=found[5])
    kinds = {"slack": n.SlackWebhook, "teams": n.MicrosoftTeamsWebhook}
    return kinds[spec.type](url=url)


def _scrub(text: str, url: str) -> str:
    """An error's text without the channel's URL or any part of it that could be its token."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    pieces = re.split(r"[/?&=;]", f"{parts.path}?{parts.query}")
    userinfo = parts.netloc.rpartition("@")[0]
    secrets = {url, parts.path, parts.query, userinfo, *(p for p in pieces if len(p) >= 8)} - {"", "/"}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def message(cfg: ProjectConfig, route: AlertRouteSpec) -> tuple[str, str]:
    """The subject and body templates of a route (Prefect renders their event placeholders)."""
    source = route.when[0]
    anchor, command = RUNBOOKS[source]
    subject_of = f"model {cfg.model.name}" if source in KINDS else f"a flow run of project {cfg.project}"
    body = render("alert.txt.j2", severity=route.severity.upper(), project=cfg.project, subject_of=subject_of,
                  kind=KINDS.get(source, "flow"), persist=route.persist, within=route.within,
                  runbook=f"{cfg.alerts.runbook_base}#{anchor}", command=command)  # fmt: skip
    subject = f"[{route.severity}] mlcycle {cfg.project}: {{{{ event.event }}}}"
    return subject, body


def trigger(cfg: ProjectConfig, route: AlertRouteSpec) -> Any:
    from prefect.events.schemas.automations import EventTrigger, Posture

    expect = {e for source in route.when for e in ALERT_SOURCES[source]}
    ours = [s for s in route.when if s in KINDS]
    if ours and len(ours) != len(route.when):
        raise AlertError(
            f"alert route on {', '.join(route.when)}: mlcycle's events and flow-run states go in separate routes"
        )
    within = parse_window(route.within)
    common = {"expect": expect, "posture": Posture.Reactive, "threshold": route.persist,
              "within": max(within, timedelta(seconds=10))}  # fmt: skip
    if ours:  # mlcycle's events about this project's model, counted per model
        return EventTrigger(match={"prefect.resource.id": f"mlcycle.model.{cfg.model.name}"},
                            for_each={"prefect.resource.id"}, **common)  # fmt: skip
    # Flow runs of this project: its deployments carry the project's name as a tag. Counted per
    # deployment: a flow run fails once, so a count per run could never pass 1.
    return EventTrigger(match={"prefect.resource.id": "prefect.flow-run.*"},
                        match_related={"prefect.resource.id": f"prefect.tag.{cfg.project}"},
                        for_each={"related:deployment:prefect.resource.id"}, **common)  # fmt: skip


def sync(cfg: ProjectConfig, api_url: str | None = None) -> Synced:
    """Make the Prefect server (``api_url``, else PREFECT_API_URL) hold exactly the project's alert
    blocks and automations: created or updated by name, this project's leftovers deleted."""
    if api_url:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api_url}):
            return sync(cfg)
    from prefect import get_client
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore

    spec = cfg.alerts
    blocks: dict[str, Any] = {}
    for name, channel in spec.channels.items():
        block = make_block(cfg, name, channel)
        block.save(block_name(cfg, name), overwrite=True)
        blocks[name] = block._block_document_id
    wanted: dict[str, Any] = {}
    for index, route in enumerate(spec.routes):
        subject, body = message(cfg, route)
        actions = [SendNotification(block_document_id=blocks[c], subject=subject, body=body) for c in route.to]
        name = automation_name(cfg, index, route)
        wanted[name] = AutomationCore(name=name, description=f"mlcycle alert route {index} of project {cfg.project}",
                                  trigger=trigger(cfg, route), actions=actions, tags=[TAG, cfg.project])  # fmt: skip
    removed = []
    with get_client(sync_client=True) as client:
        existing = _ours(cfg, client.read_automations())
        # Updated in place, then created, then leftovers deleted: no moment without the routes. Two of
        # one name (two syncs that raced) keep the first, the others are deleted as leftovers.
        for name, automation in wanted.items():
            if existing.get(name):
                client.update_automation(existing[name].pop(0).id, automation)
            else:
                client.create_automation(automation=automation)
        for name, extras in existing.items():
            for automation in extras:
                client.delete_automation(automation.id)
                removed.append(name)
    return Synced([block_name(cfg, c) for c in blocks], list(wanted), removed)


def _ours(cfg: ProjectConfig, automations: list[Any]) -> dict[str, list[Any]]:
    """This project's alert automations: named as ``automation_name`` names them and tagged with
    mlcycle's tag and the project's name (a prefix alone would take another project's, e.g. of a
    project named ``<this>-alert``)."""
    pattern = re.compile(re.escape(prefix(cfg)) + r"-alert-\d+-[a-z_-]+")
    ours: dict[str, list[Any]] = {}
    for a in automations:
        if pattern.fullmatch(a.name) and TAG in (a.tags or []) and cfg.project in (a.tags or []):
            ours.setdefault(a.name, []).append(a)
    return ours


def remove(cfg: ProjectConfig) -> list[str]:
    """Delete this project's alert automations (``mlcycle alerts sync`` puts them back)."""
    from prefect import get_client

    gone = []
    with get_client(sync_client=True) as client:
        for name, automations in _ours(cfg, client.read_automations()).items():
            for automation in automations:
                client.delete_automation(automation.id)
                gone.append(name)
    return gone


def send_test(cfg: ProjectConfig) -> dict[str, str]:
    """One message to each channel, straight from here (no server needed): channel → "sent" or why
    not, the why without the channel's URL (it holds the token)."""
    from prefect.blocks.abstract import NotificationError

    out = {}
    for name, channel in cfg.alerts.channels.items():
        url = os.environ.get(channel.url_env, "")
        try:
            block = make_block(cfg, name, channel)
            body = (f"A test of channel {name} ({channel.type}) from mlcycle alerts test. Runbooks: "
                    f"{cfg.alerts.runbook_base}")  # fmt: skip
            with block.raise_on_failure():  # apprise reports a failed send as False, not as an error
                block.notify(body, subject=f"mlcycle {cfg.project}: test alert to {name}")
            out[name] = "sent"
        except NotificationError as exc:
            out[name] = "failed: " + _scrub(exc.log.strip().splitlines()[-1] if exc.log.strip() else "not sent", url)
        except Exception as exc:  # every channel is tried; each failure is reported by name
            out[name] = f"failed: {type(exc).__name__}: {_scrub(str(exc), url) if url else exc}"
    return out
