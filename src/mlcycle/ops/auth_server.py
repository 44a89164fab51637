"""The identity provider of profile ``scale``: an MLflow tracking server with its basic-auth app,
and the registry gate beside it (docs/governance.md).

Start, provision and stop them on loopback. Secrets never go on a command line (``ps`` shows every
argument to every user): the admin password and the auth database's URL go into the auth app's ini
file, written with mode 0600 and named by ``MLFLOW_AUTH_CONFIG_PATH``; the backend store URL, the
Flask secret and the registrar's password go through the child's environment
(``/proc/<pid>/environ`` is readable by its owner only).

Provisioning talks to the server's REST API with the admin's credentials, passed per request (not
through ``MLFLOW_TRACKING_*``, which MLflow's own ``AuthServiceClient`` reads process-wide).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mlcycle import TELEMETRY_OFF, net
from mlcycle import settings as scale
from mlcycle.registry import gate

EXPERIMENT, REGISTERED_MODEL = "experiment", "registered_model"
READ, EDIT, MANAGE, NO_PERMISSIONS = "READ", "EDIT", "MANAGE", "NO_PERMISSIONS"
START_TIMEOUT_S, STOP_TIMEOUT_S = 120.0, 20.0


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def generate(cls, username: str) -> Credentials:
        return cls(username, secrets.token_urlsafe(24))

    @property
    def auth(self) -> tuple[str, str]:
        return self.username, self.password


class AuthServerError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- configuration
def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by this user only (0600 from creation: never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def write_auth_config(path: Path, database_uri: str, admin: Credentials, default_permission: str = READ) -> Path:
    """The basic-auth app's ini. ``default_permission`` is what every user holds on a resource
    nobody granted them anything on: READ here — EDIT would let every user move every alias."""
    return write_private(
        path,
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {admin.username}\n"
        f"admin_password = {admin.password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )


def server_command(host: str, port: int, workers: int = 1) -> list[str]:
    """``mlflow server --app-name basic-auth``: no secret among the arguments."""
    mlflow = Path(sys.executable).with_name("mlflow")
    return [str(mlflow), "server", "--app-name", "basic-auth", "--host", host, "--port", str(port),
            "--workers", str(workers)]  # fmt: skip


def server_env(backend_uri: str, auth_config: Path, artifacts: Path, secret_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "MLCYCLE_REGISTRAR_"))}
    return {
        **env,
        **TELEMETRY_OFF,
        "MLFLOW_BACKEND_STORE_URI": backend_uri,  # click reads --backend-store-uri from here
        "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
    }


# ----------------------------------------------------------------------------- processes
@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    startup_s: float = 0.0

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "<no log>"
        return "\n".join(text.splitlines()[-lines:])


def _spawn(name: str, command: list[str], env: Mapping[str, str], url: str, log_path: Path,
           timeout: float) -> Process:  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env), start_new_session=True)  # fmt: skip
    process = Process(name, proc, url, log_path)
    try:
        wait_healthy(process, timeout)
    except BaseException:
        stop(process)
        raise
    process.startup_s = time.monotonic() - started
    return process


def wait_healthy(process: Process, timeout: float = START_TIMEOUT_S) -> None:
    deadline, last = time.monotonic() + timeout, "no answer yet"
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        while True:
            if process.proc.poll() is not None:
                raise AuthServerError(f"{process.name} exited with {process.proc.returncode} before it was healthy;"
                                      f" log tail:\n{scale.redact(process.log_tail())}")  # fmt: skip
            try:
                response = http.get(process.url + "/health")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise AuthServerError(f"{process.name} at {process.url} not healthy after {timeout:.0f}s ({last})")
            time.sleep(0.3)


def stop(process: Process, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group (uvicorn's workers with it), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.proc.pid, signal.SIGKILL)
    process.proc.wait(timeout=timeout)


def start_server(
    workdir: Path,
    backend_uri: str,
    auth_database_uri: str,
    admin: Credentials,
    port: int | None = None,
    host: str = net.LOOPBACK,
    timeout: float = START_TIMEOUT_S,
) -> Process:
    """Start ``mlflow server --app-name basic-auth`` with its stores on PostgreSQL (databases
    created when missing); the admin user is created at first start from the ini."""
    for uri in (backend_uri, auth_database_uri):
        scale.ensure_database(uri)
    port = port or net.free_port()
    config = write_auth_config(workdir / "basic_auth.ini", auth_database_uri, admin)
    env = server_env(backend_uri, config, workdir / "mlartifacts", secrets.token_hex(32))
    return _spawn("mlflow-auth-server", server_command(host, port), env, f"http://{host}:{port}",
                  workdir / "mlflow-auth-server.log", timeout)  # fmt: skip


def start_gate(
    workdir: Path,
    config_path: Path,
    tracking_url: str,
    registrar: Credentials,
    promotion_log_uri: str | None = None,
    port: int | None = None,
    host: str = net.LOOPBACK,
    timeout: float = 60.0,
) -> Process:
    """Start the registry gate (``python -m mlcycle.ops.registry_gate``) with the registrar's password
    in a 0600 file only it reads."""
    port = port or net.free_port()
    secret = write_private(workdir / "registrar.password", registrar.password)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update({**TELEMETRY_OFF, gate.REGISTRAR_USERNAME_ENV: registrar.username,
                gate.REGISTRAR_PASSWORD_FILE_ENV: str(secret)})  # fmt: skip
    env.pop(gate.REGISTRAR_PASSWORD_ENV, None)
    command = [sys.executable, "-m", "mlcycle.ops.registry_gate", "--config", str(config_path), "--tracking-url",
               tracking_url, "--host", host, "--port", str(port)]  # fmt: skip
    if promotion_log_uri:
        command += ["--promotion-log-uri", promotion_log_uri]
    return _spawn("registry-gate", command, env, f"http://{host}:{port}", workdir / "registry-gate.log", timeout)


# ----------------------------------------------------------------------------- provisioning (REST)
def _rest(url: str, admin: Credentials, method: str, path: str, **kwargs: object) -> dict:
    with httpx.Client(trust_env=False, timeout=30.0) as http:
        response = http.request(method, url.rstrip("/") + path, auth=admin.auth, **kwargs)  # type: ignore[arg-type]
    if response.status_code != 200:
        raise AuthServerError(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
    return response.json() if response.content else {}


def create_user(url: str, admin: Credentials, user: Credentials) -> None:
    _rest(
        url, admin, "POST", "/api/2.0/mlflow/users/create", json={"username": user.username, "password": user.password}
    )


def set_password(url: str, admin: Credentials, username: str, password: str) -> None:
    """Reset a user's password as the admin (rotation; the old one stops working at once)."""
    _rest(
        url, admin, "PATCH", "/api/2.0/mlflow/users/update-password", json={"username": username, "password": password}
    )


def grant(url: str, admin: Credentials, username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Give ``username`` ``permission`` on the resource; a grant already there is left as it is
    (the creator of a registered model or experiment holds MANAGE on it from the start)."""
    try:
        _rest(url, admin, "POST", "/api/3.0/mlflow/users/permissions/grant",
              json={"username": username, "resource_type": resource_type, "resource_id": resource_id,
                    "permission": permission})  # fmt: skip
    except AuthServerError as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise


def ensure_experiment(url: str, admin: Credentials, name: str) -> str:
    """The experiment's id, created by the admin if missing (so no trainer owns it: MANAGE stays
    with the admin, trainers get EDIT)."""
    with httpx.Client(trust_env=False, timeout=30.0) as http:
        found = http.get(url + "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name},
                         auth=admin.auth)  # fmt: skip
    if found.status_code == 200:
        return str(found.json()["experiment"]["experiment_id"])
    return str(_rest(url, admin, "POST", "/api/2.0/mlflow/experiments/create", json={"name": name})["experiment_id"])


@dataclass(frozen=True)
class Accounts:
    registrar: Credentials
    trainers: tuple[Credentials, ...] = ()
    others: tuple[Credentials, ...] = ()  # approvers, operators, viewers: READ by default, all changes through the gate


def provision(url: str, admin: Credentials, accounts: Accounts, experiment: str, model: str) -> str:
    """Users and grants for separation of duties; returns the experiment id.

    - trainers: EDIT on the experiment (runs, metrics, artifacts, logged models); nothing on the
      registered model beyond ``default_permission`` READ — so no version, tag or alias of theirs.
    - the registrar: creates the registered model (and so holds MANAGE on it), EDIT on the experiment.
    - everyone else: READ by default; approvals and promotions go through the gate."""
    for user in (accounts.registrar, *accounts.trainers, *accounts.others):
        create_user(url, admin, user)
    experiment_id = ensure_experiment(url, admin, experiment)
    for user in (accounts.registrar, *accounts.trainers):
        grant(url, admin, user.username, EXPERIMENT, experiment_id, EDIT)
    with httpx.Client(trust_env=False, timeout=30.0) as http:
        created = http.post(url + "/api/2.0/mlflow/registered-models/create", json={"name": model},
                            auth=accounts.registrar.auth)  # fmt: skip
    if created.status_code != 200 and "RESOURCE_ALREADY_EXISTS" not in created.text:
        raise AuthServerError(f"create registered model {model}: HTTP {created.status_code} {created.text[:300]}")
    grant(url, admin, accounts.registrar.username, REGISTERED_MODEL, model, MANAGE)
    return experiment_id


def usernames(users: Iterable[Credentials]) -> list[str]:
    return [u.username for u in users]
