"""The registry gate's HTTP server (docs/governance.md): the one process that holds the registrar's
MLflow password and so the only one that changes the registry in profile ``scale``.

Every request carries the caller's own MLflow credentials (HTTP basic); ``gate.verify`` checks them
against the MLflow server, the operations of ``mlcycle.registry.gate`` (and, for a rollback,
``serving.rollout``) apply the governance rules and write as the registrar. Answers: 200 with what
changed; 401 ``{"rule": "authentication"}``; 403 ``{"rule": …}`` for a refusal, which the promotion
log records; 400 for a malformed request; 502 when MLflow fails.

Run it as ``python -m mlcycle.ops.registry_gate --config mlcycle.yaml --tracking-url URL``, with the
registrar's password in the file ``MLCYCLE_REGISTRAR_PASSWORD_FILE`` names (``auth_server.start_gate``).
A stdlib threading server: state changes are serialised by one lock, and a gate serves a handful of
requests a day.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlcycle.project.config import load_config
from mlcycle.registry import aliases as registry
from mlcycle.registry import gate as ops
from mlcycle.registry import governance as gov
from mlcycle.serving import rollout


def rollback(
    client: MlflowClient, log: registry.PromotionLog, settings: ops.GateSettings, principal: gov.Principal, reason: str
) -> list[registry.PromotionEvent]:
    """``serving.rollout.rollback`` for an approver or operator; refused (and logged) for anyone else."""
    try:
        gov.require_role(settings.governance, principal, ("approver", "operator"), "roll back")
    except gov.Refused as exc:
        raise gov.record_refusal(log, settings.model, None, principal, exc) from None
    try:
        return rollout.rollback(client, log, settings.model, reason, str(principal))
    except rollout.NothingToRollBack as exc:
        raise gov.Refused("nothing-to-roll-back", str(exc)) from None


@dataclass
class Gate:
    """Settings, the registrar's client (credentials from this process's environment) and the
    promotion log. One lock: state changes run one at a time."""

    settings: ops.GateSettings
    client: MlflowClient
    log: registry.PromotionLog
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, operation: str, principal: gov.Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        s, c, lg = self.settings, self.client, self.log
        actions: dict[str, Callable[[], dict[str, Any]]] = {
            "whoami": lambda: {},
            "register": lambda: {"version": ops.register(c, lg, s, principal, str(body["run_id"]),
                                                         str(body["source"]), body.get("tags"),
                                                         body.get("triggered_by"))},
            "challenger": lambda: {"event": _event(ops.set_challenger(c, lg, s, principal, str(body["version"])))},
            "approve": lambda: {"approval": ops.decide(c, lg, s, principal, str(body["version"]), True,
                                                       str(body.get("note", ""))).line()},
            "reject": lambda: {"approval": ops.decide(c, lg, s, principal, str(body["version"]), False,
                                                      str(body.get("note", ""))).line()},
            "promote": lambda: {"events": [_event(e) for e in ops.promote(
                c, lg, s, principal, str(body["version"]), str(body.get("reason", "promoted")),
                bool(body.get("on_behalf_of_approval", False)))]},
            "rollback": lambda: {"events": [_event(e) for e in rollback(c, lg, s, principal,
                                                                        str(body.get("reason", "rollback")))]},
        }  # fmt: skip
        if operation not in actions:
            raise KeyError(operation)
        with self.lock:
            return {"principal": principal.name, "authenticated": principal.authenticated, "via": principal.via,
                    **actions[operation]()}  # fmt: skip


def _event(event: registry.PromotionEvent) -> dict[str, Any]:
    return {"alias": event.alias, "from": event.from_version, "to": event.to_version, "actor": event.actor,
            "reason": event.reason, "action": event.action}  # fmt: skip


def make_handler(gate: Gate) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "mlcycle-registry-gate"

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {self.address_string()} "
                             f"{format % args}\n")  # fmt: skip

        def _send(self, status: int, payload: Mapping[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Basic realm="mlcycle-registry-gate"')
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(HTTPStatus.OK, {"status": "ok", "model": gate.settings.model})
            elif self.path == "/v1/whoami":
                self._dispatch("whoami", {})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            if not self.path.startswith("/v1/"):
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
            except ValueError as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": f"bad request: {exc}"})
                return
            self._dispatch(self.path[len("/v1/") :], body)

        def _dispatch(self, operation: str, body: Mapping[str, Any]) -> None:
            username, password = ops.basic_credentials(self.headers.get("Authorization"))
            try:
                principal = ops.verify(gate.settings.tracking_url, username, password)
                self._send(HTTPStatus.OK, gate.handle(operation, principal, body))
            except ops.Unauthenticated as exc:
                self._send(HTTPStatus.UNAUTHORIZED, {"rule": exc.rule, "error": str(exc)})
            except gov.Refused as exc:
                self._send(HTTPStatus.FORBIDDEN, {"rule": exc.rule, "error": str(exc)})
            except KeyError as exc:
                if exc.args[0] == operation:
                    self._send(HTTPStatus.NOT_FOUND, {"error": f"no operation {operation}"})
                else:
                    self._send(HTTPStatus.BAD_REQUEST, {"error": f"bad request: {operation} needs {exc.args[0]!r}"})
            except ConnectionError as exc:
                self._send(HTTPStatus.BAD_GATEWAY, {"error": str(exc)})
            except MlflowException as exc:
                self._send(HTTPStatus.BAD_GATEWAY, {"error": f"MLflow: {exc.message}"})

    return Handler


def build(settings: ops.GateSettings, environ: Mapping[str, str] = os.environ) -> Gate:
    """The gate of this process. MLflow's client reads credentials from the process environment, so
    the registrar's go there — this process is the gate and nothing else."""
    username, password = ops.registrar_credentials(environ)
    registrar = ops.verify(settings.tracking_url, username, password)  # fail at start, not at the first request
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = registrar.name, password
    os.environ.pop(ops.REGISTRAR_PASSWORD_ENV, None)
    client = MlflowClient(settings.tracking_url, settings.tracking_url)
    ops.ensure_model(client, settings.model)
    return Gate(settings, client, registry.PromotionLog(settings.promotion_log_uri))


def serve(settings: ops.GateSettings, host: str = "127.0.0.1", port: int = 5100) -> None:
    server = ThreadingHTTPServer((host, port), make_handler(build(settings)))
    sys.stderr.write(f"registry gate for {settings.model} on http://{host}:{port} (MLflow {settings.tracking_url})\n")
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlcycle.ops.registry_gate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="mlcycle.yaml (model name, governance, rollout)")
    parser.add_argument("--tracking-url", required=True, help="the MLflow server with basic auth")
    parser.add_argument("--promotion-log-uri", default=None, help="default: the config's")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5100)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    serve(ops.GateSettings.from_config(cfg, args.tracking_url, args.promotion_log_uri), args.host, args.port)


if __name__ == "__main__":
    main()
