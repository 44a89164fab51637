"""Each stack server starts from the locked environment and answers on loopback.

Import checks are not enough: a server can import cleanly and still die on start-up (a web
framework pin that breaks its app factory, a migration that fails, a worker that cannot spawn).
So every test here runs the real CLI as a subprocess, waits for its health endpoint, and makes
one real request. Nothing may reach the internet: the machines mlcycle runs on are often offline.

Every server runs in its own process group, so stopping it also stops the workers it spawned.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcycle.net import free_port
from mlcycle.project.config import ProjectConfig

pytestmark = pytest.mark.slow

from servers import (  # noqa: E402
    LOOPBACK,
    SLOW_START_S,
    TESTS_DIR,
    VENV_BIN,
    http_client,
    running_server,
    server_env,
)


def test_prefect_server_starts(prefect_server: str) -> None:
    """``prefect server start`` (SQLite, private PREFECT_HOME; the session's server) serves its API.

    It also lists work pools and deployments the way Prefect's own client does (``limit: null``):
    FastAPI 0.151+ answers that with a 422 though the server still starts and reports healthy."""
    base_url = prefect_server.removesuffix("/api")
    with http_client() as client:
        version = client.get(base_url + "/api/admin/version")
        assert version.status_code == 200, version.text
        assert version.json().startswith("3."), version.text
        for path, body in (
            ("/api/work_pools/filter", {"limit": None, "offset": 0, "work_pools": None}),
            ("/api/deployments/filter", {"limit": None, "offset": 0, "sort": "NAME_ASC"}),
        ):
            listed = client.post(base_url + path, json=body)
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
