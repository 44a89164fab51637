"""Each stack server starts from the locked environment and answers on loopback.

Import checks are not enough: a server can import cleanly and still die on start-up (a web
framework pin that breaks its app factory, a migration that fails, a worker that cannot spawn).
So every test here runs the real CLI as a subprocess, waits for its health endpoint, and makes
one real request. Nothing may reach the internet: the machines mlcycle runs on are often offline.

Every server runs in its own process group, so stopping it also stops the workers it spawned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mlcycle import TELEMETRY_OFF
from mlcycle.config import ProjectConfig
from mlcycle.service_process import free_port

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
TESTS_DIR = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
# Cold starts on a shared 2-core machine: Prefect (migrations, UI copy) and BentoML (process
# supervisor + worker) are the slow ones.
SLOW_START_S = 240.0
START_S = 120.0
STOP_S = 20.0


def server_env(**extra: str) -> dict[str, str]:
    """The caller's environment with telemetry off, so no server tries to phone home."""
    return {**os.environ, **TELEMETRY_OFF, **extra}


def http_client() -> httpx.Client:
    """A client that ignores proxy variables: a proxy would turn a loopback request into a hang."""
    return httpx.Client(trust_env=False, timeout=10.0)


@dataclass
class Server:
    """A running server subprocess: its base URL, its log, and how long it took to be healthy."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    startup_s: float = 0.0

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "<no log>"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we cannot signal still exists
        return True
    return True


def stop_group(proc: subprocess.Popen[bytes], timeout: float = STOP_S) -> None:
    """SIGTERM the whole process group, wait for every member, then SIGKILL what is left.

    Waiting on the leader alone is not enough: supervisors (BentoML's circus, Prefect's uvicorn
    child) can leave workers behind that still hold the port."""
    pgid = proc.pid  # start_new_session=True makes the leader's pid the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=timeout)


@contextlib.contextmanager
def running_server(
    cmd: Sequence[str],
    *,
    health_path: str,
    port: int,
    log_path: Path,
    timeout: float = START_S,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Server]:
    """Start ``cmd``, yield once ``health_path`` answers 200, and always stop the process group.

    Fails early, with the log tail, if the process exits before it is healthy, so a crash on
    import is reported in seconds, not after the whole deadline."""
    base_url = f"http://{LOOPBACK}:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else server_env(),
            cwd=cwd,
            start_new_session=True,
        )
    server = Server(proc=proc, base_url=base_url, log_path=log_path)
    try:
        last_error = "no answer yet"
        deadline = started + timeout
        with http_client() as client:
            while True:
                if proc.poll() is not None:
                    pytest.fail(
                        f"{cmd[0]} exited with {proc.returncode} before {health_path} answered; "
                        f"log tail:\n{server.log_tail()}"
                    )
                try:
                    response = client.get(base_url + health_path, timeout=5.0)
                    if response.status_code == 200:
                        break
                    last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last_error = repr(exc)
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{base_url}{health_path} not healthy after {timeout:.0f}s "
                        f"(last: {last_error}); log tail:\n{server.log_tail()}"
                    )
                time.sleep(0.5)
        server.startup_s = time.monotonic() - started
        assert proc.poll() is None, f"server exited right after answering:\n{server.log_tail()}"
        print(f"\n{Path(cmd[0]).name} healthy after {server.startup_s:.1f}s")
        yield server
    finally:
        stop_group(proc)


def test_prefect_server_starts(tmp_path: Path) -> None:
    """``prefect server start`` (SQLite, private PREFECT_HOME) serves its API and health check.

    It also lists work pools and deployments the way Prefect's own client does (``limit: null``):
    FastAPI 0.151+ answers that with a 422 though the server still starts and reports healthy."""
    port = free_port()
    env = server_env(
        PREFECT_HOME=str(tmp_path / "prefect_home"),
        PREFECT_SERVER_API_HOST=LOOPBACK,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_API_URL=f"http://{LOOPBACK}:{port}/api",
    )
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port)]
    with (
        running_server(
            cmd,
            health_path="/api/health",
            port=port,
            log_path=tmp_path / "prefect.log",
            timeout=SLOW_START_S,
            env=env,
            cwd=tmp_path,
        ) as server,
        http_client() as client,
    ):
        version = client.get(server.base_url + "/api/admin/version")
        assert version.status_code == 200, version.text
        assert version.json().startswith("3."), version.text
        for path, body in (
            ("/api/work_pools/filter", {"limit": None, "offset": 0, "work_pools": None}),
            ("/api/deployments/filter", {"limit": None, "offset": 0, "sort": "NAME_ASC"}),
        ):
            listed = client.post(server.base_url + path, json=body)
            assert listed.status_code == 200, f"{path}: {listed.status_code} {listed.text[:300]}"


def test_bentoml_serve_starts(tmp_path: Path) -> None:
    """``bentoml serve`` of a one-API service gets ready and answers a real request."""
    port = free_port()
    env = server_env(BENTOML_HOME=str(tmp_path / "bentoml_home"))
    cmd = [
        str(VENV_BIN / "bentoml"),
        "serve",
        "smoke_service:Echo",
        "--working-dir",
        str(TESTS_DIR),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]
    with (
        running_server(
            cmd,
            health_path="/readyz",
            port=port,
            log_path=tmp_path / "bentoml.log",
            timeout=SLOW_START_S,
            env=env,
            cwd=TESTS_DIR,
        ) as server,
        http_client() as client,
    ):
        for probe in ("/healthz", "/livez"):
            response = client.get(server.base_url + probe)
            assert response.status_code == 200, f"{probe}: {response.status_code} {response.text}"
        answer = client.post(server.base_url + "/echo", json={"text": "smoke"})
        assert answer.status_code == 200, answer.text
        assert answer.text == "smoke"


def test_mlflow_server_starts(tmp_path: Path) -> None:
    """``mlflow server`` on a fresh SQLite store (migrations run) answers health and the REST API."""
    port = free_port()
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--default-artifact-root",
        (tmp_path / "artifacts").as_uri(),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with (
        running_server(cmd, health_path="/health", port=port, log_path=tmp_path / "mlflow.log", cwd=tmp_path) as server,
        http_client() as client,
    ):
        search = client.get(server.base_url + "/api/2.0/mlflow/experiments/search", params={"max_results": 1})
        assert search.status_code == 200, search.text
        assert "experiments" in search.json()


def test_feast_serve_starts(project: ProjectConfig, tmp_path: Path) -> None:
    """``feast serve`` on the project's applied, materialized repo returns online features.

    The repo's offline store is mlcycle's own class, so this also proves the server process can
    import mlcycle from the locked environment."""
    port = free_port()
    repo = project.feature_repo_path
    cmd = [
        str(VENV_BIN / "feast"),
        "-c",
        str(repo),
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]
    # Gunicorn 25.1+ opens a control socket in $XDG_RUNTIME_DIR, else in ~/.gunicorn/: keep it
    # private to this test so it neither litters HOME nor collides with another feast server.
    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir()
    env = server_env(XDG_RUNTIME_DIR=str(runtime_dir))
    with (
        running_server(
            cmd, health_path="/health", port=port, log_path=tmp_path / "feast.log", env=env, cwd=repo
        ) as server,
        http_client() as client,
    ):
        response = client.post(
            server.base_url + "/get-online-features",
            json={"features": ["user_txn_stats:txn_count_24h"], "entities": {"user_id": [1, 2]}},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        names = body["metadata"]["feature_names"]
        assert "txn_count_24h" in names, body
        # One column per name (the entity key included), one value per requested user.
        assert len(body["results"]) == len(names), body
        assert all(len(column["values"]) == 2 for column in body["results"]), body
