"""Run the BentoML scoring service as a child process: started once, waited for, always stopped.

Where it listens is a security decision, made here once for ``mlcycle serve``, ``mlcycle up`` and
the tests: loopback (127.0.0.1) by default, not BentoML's 0.0.0.0; another host only when asked
for, and then only with ``MLCYCLE_API_KEY`` set (``check_exposure``), since ``/predict`` and
``/rollout/status`` answer anyone who can reach them otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mlcycle.net import LOOPBACK, free_port  # free_port: importable from here, as before
from mlcycle.project.bentofile import GENERIC_SERVICE, PROJECT_SERVICE, service_target  # noqa: F401
from mlcycle.project.config import ProjectConfig

API_KEY_VAR = "MLCYCLE_API_KEY"


class ExposedWithoutKey(ValueError):
    """A non-loopback host was asked for without ``MLCYCLE_API_KEY``; the message says how to fix it."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; 0.0.0.0, ``::`` and every other name expose."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, environ: dict[str, str] | None = None) -> None:
    """Refuse to listen beyond loopback without an API key (raises ``ExposedWithoutKey``)."""
    env = os.environ if environ is None else environ
    if not is_loopback(host) and not env.get(API_KEY_VAR):
        raise ExposedWithoutKey(
            f"refusing to serve on {host}: that host is reachable from other machines and {API_KEY_VAR} is not "
            f"set, so anyone there could score and read the rollout status. Set it (e.g. `export "
            f"{API_KEY_VAR}=$(openssl rand -hex 32)`) and send it as the x-api-key header, or serve on "
            f"{LOOPBACK} (the default) behind a proxy that authenticates."
        )


def serve_command(port: int, host: str = LOOPBACK, project_root: Path | None = None) -> list[str]:
    """``bentoml serve`` of the project's service, run from the project directory; ``--host`` always
    explicit (BentoML's default is every interface)."""
    root = Path(project_root) if project_root is not None else Path.cwd()
    target = service_target(root)
    return [sys.executable, "-m", "bentoml", "serve", target, "--working-dir", str(root), "--port", str(port),
            "--host", host]  # fmt: skip


class ServiceProcess:
    """``bentoml serve services.service:ScoringService`` for a project, on a loopback port."""

    def __init__(self, cfg: ProjectConfig, port: int | None = None, env: dict[str, str] | None = None):
        self.cfg = cfg
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = cfg.data_path / "service.log"
        self.env = {
            **os.environ,
            "MLCYCLE_CONFIG": str(cfg.root / "mlcycle.yaml"),
            "BENTOML_HOME": str(cfg.data_path / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        """The command that serves the project's service on this port (``mlcycle up`` runs it too)."""
        return serve_command(self.port, LOOPBACK, self.cfg.root)

    def start(self, timeout: float = 240.0, ready: bool = True) -> ServiceProcess:
        """Start and wait until it is ready to score (``/readyz``), or with ``ready=False`` only until
        it is up and answering (``/livez``: a service may be up but not ready, and say why)."""
        probe = "/readyz" if ready else "/livez"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.cfg.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"service exited ({self.proc.returncode}):\n{self.log_tail()}")
                try:
                    if client.get(self.url + probe).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"service not {'ready' if ready else 'up'} after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server and every process it started. BentoML runs its worker in a process group
        of its own, so signalling the server's group alone can leave the worker behind."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        _, alive = psutil.wait_procs(descendants, timeout=5)
        for leftover in alive:
            with contextlib.suppress(psutil.Error):
                leftover.kill()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
