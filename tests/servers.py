"""Start a server CLI as its own process group, wait for its health endpoint, always stop it.

Shared by the smoke tests and the session fixtures (one Prefect server per test session)."""

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


class WebhookReceiver:
    """A loopback HTTP endpoint that keeps every POSTed JSON body: where alerts are delivered in tests."""

    def __init__(self) -> None:
        import http.server
        import json as _json
        import threading

        self.received: list[dict] = []
        self.paths: list[str] = []  # the path each body was POSTed to, in the same order
        self.arrived = threading.Condition()
        received, paths, arrived = self.received, self.paths, self.arrived

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server API names it
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with arrived:
                    paths.append(self.path)
                    received.append(_json.loads(body or b"{}"))
                    arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float) -> list[dict]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
