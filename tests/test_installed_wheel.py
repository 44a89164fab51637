"""mlcycle as a user gets it: built into a wheel, installed into a fresh environment outside the
checkout with only its declared dependencies (no dev extra, the lockfile's versions), and the whole
loop run there through its console script, from a directory no source tree is above.

The loop is examples/delivery_times/run.sh, the script `make example` runs: init → features build →
features publish → train → serve → /predict → replay (finding `serve`'s service by itself) → monitor
→ batch-score → history → reproduce. Then `mlcycle up` for that project (Prefect server, work pool,
the project's deployments from its generated prefect.yaml, worker, MLflow UI, scoring service,
broker, consumer), `status`, a replay into up's service, and `down`.

Expected answers come from outside the code under test: the wheel's file list from the zip itself,
what Prefect's own API lists as deployed, the HTTP answers of the servers, the processes left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from mlcycle import TELEMETRY_OFF
from mlcycle.net import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "delivery_times"
# What a project runs must be inside the wheel: the generic flows, the service, the project templates.
MUST_CARRY = [
    "mlcycle/cli/app.py",
    "mlcycle/service.py",
    *(
        f"mlcycle/flows/{m}.py"
        for m in ("training", "monitoring", "retraining", "rollout", "batch_score", "retention", "backup")
    ),
]
# Flow names of the generated prefect.yaml.
DEPLOYED = {"train", "monitor", "retrain", "rollout", "batch_score", "retention", "backup"}


def _uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if not found and (home := Path.home() / ".local" / "bin" / "uv").is_file():
        found = str(home)
    if not found:
        pytest.fail("uv not found: run the tests with `make test`, which installs it")
    return found


def _run(cmd: list[str | Path], **kw) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))} → {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


@dataclass
class Installed:
    root: Path  # a scratch directory outside the checkout
    wheel: Path
    venv: Path
    env: dict[str, str]  # what a user's shell would have: the venv on PATH, no PYTHONPATH, a fresh HOME

    def mlcycle(
        self, *args: str, cwd: Path, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.venv / "bin" / "mlcycle"), *args]
        done = subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, (
                f"mlcycle {' '.join(args)} → {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("installed")
    assert REPO not in root.resolve().parents, root
    uv = _uv()
    uv_env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    uv_env["UV_PYTHON_DOWNLOADS"] = "never"
    dist = root / "dist"
    _run([uv, "build", "--wheel", "--out-dir", dist, REPO], env=uv_env, timeout=600)
    (wheel,) = dist.glob("mlcycle-*.whl")
    # The lockfile's versions of the declared dependencies, without the dev extra and without mlcycle
    # itself: the wheel brings that.
    requirements = root / "requirements.txt"
    _run([uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--quiet", "-o", requirements],
         cwd=REPO, env=uv_env, timeout=300)  # fmt: skip
    venv = root / "venv"
    _run([uv, "venv", "--quiet", "--python", sys._base_executable, venv], env=uv_env, timeout=300)
    _run([uv, "pip", "install", "--quiet", "--python", venv / "bin" / "python", "-r", requirements, wheel],
         env=uv_env, timeout=900)  # fmt: skip
    home = root / "home"
    home.mkdir()
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "MLCYCLE_CONFIG", "MLCYCLE_PROFILE",
            "PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI", "BENTOML_HOME", "UV")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(TELEMETRY_OFF)
    env.update(HOME=str(home), BENTOML_HOME=str(root / "bentoml"))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return Installed(root, wheel, venv, env)


def test_the_wheel_carries_what_a_project_runs_and_the_venv_imports_it(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    missing = [name for name in MUST_CARRY if name not in names]
    assert not missing, f"not in {installed.wheel.name}: {missing}"
    templates = sorted(n for n in names if n.startswith("mlcycle/templates/") and n.endswith(".j2"))
    assert templates, "no project templates (mlcycle/templates/*.j2) in the wheel"
    where = subprocess.run(
        [installed.venv / "bin" / "python", "-c", "import mlcycle, sys; print(mlcycle.__file__); print(sys.path)"],
        cwd=installed.root, env=installed.env, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert Path(where[0]).is_relative_to(installed.venv), where  # the wheel's copy, not the checkout's src/
    assert str(REPO) not in where[1], where[1]


def test_a_directory_that_is_no_project_is_refused_with_the_fix(installed: Installed) -> None:
    empty = installed.root / "not-a-project"
    empty.mkdir()
    done = installed.mlcycle("train", cwd=empty, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not an mlcycle project" in done.stdout and "mlcycle init" in done.stdout, done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert list(empty.iterdir()) == []  # nothing half-written


def test_a_dependency_missing_from_the_environment_is_named_with_the_fix(installed: Installed) -> None:
    """As if Feast had been left out (`--no-deps`, or removed since): `None` in sys.modules makes
    its import fail as a missing package does, through the installed console script's own code."""
    script = "import sys; sys.modules['feast'] = None; sys.argv = ['mlcycle', 'features', 'build']; "
    script += "from mlcycle.cli import main; main()"
    project = installed.root / "half"
    project.mkdir()
    (project / "mlcycle.yaml").write_text("project: half\n")
    done = subprocess.run([installed.venv / "bin" / "python", "-c", script], cwd=project, env=installed.env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert "'feast'" in done.stderr and "pip install" in done.stderr and "Traceback" not in done.stderr


def test_the_whole_loop_runs_from_the_wheel_outside_the_checkout(installed: Installed) -> None:
    example = installed.root / "example"
    example.mkdir()
    for name in ("run.sh", "generate.py"):
        shutil.copy2(EXAMPLE / name, example / name)
    env = {**installed.env, "MLCYCLE": str(installed.venv / "bin" / "mlcycle"), "PORT": str(free_port())}
    done = subprocess.run(["bash", "run.sh"], cwd=example, env=env, capture_output=True, text=True, timeout=1800)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    project = example / "project"
    # run.sh's /predict answer (curl prints the body): a number for the regression's minutes.
    answer = next(json.loads(line) for line in done.stdout.splitlines() if line.startswith("{") and "score" in line)
    assert isinstance(answer["score"], float) and 0 < answer["score"] < 24 * 60, answer
    assert _replayed(done.stdout) > 1000, done.stdout[-3000:]  # April's orders, every one answered
    assert "identical" in out, out[-3000:]  # reproduce: the same metrics from the recorded snapshot

    # The champion's service as a Bento, from the installed mlcycle (no source tree to build a wheel from).
    assert yaml.safe_load((project / "bentofile.yaml").read_text())["service"] == "mlcycle.service:ScoringService"
    built = installed.mlcycle("build", cwd=project).stdout
    assert re.search(r"Built Bento \S*delivery_times:\w+", built), built
    ports = {opt: str(free_port()) for opt in ("--prefect-port", "--mlflow-port", "--service-port", "--evidently-port")}
    try:
        installed.mlcycle("up", *(x for kv in ports.items() for x in kv), cwd=project, timeout=1500)
        status = installed.mlcycle("status", cwd=project).stdout
        for piece in ("prefect-server", "prefect-worker", "mlflow-ui", "service", "broker", "stream-consumer",
                      "evidently-ui"):  # fmt: skip
            assert piece in status, status
        assert "exited" not in status, status
        api = f"http://127.0.0.1:{ports['--prefect-port']}/api"
        with httpx.Client(trust_env=False, timeout=30) as http:
            deployments = http.post(f"{api}/deployments/filter", json={}).json()
            flows = {f["id"]: f["name"] for f in http.post(f"{api}/flows/filter", json={}).json()}
            ours = {flows[d["flow_id"]] for d in deployments if d["name"] == "delivery_times"}
            assert ours == DEPLOYED, deployments
            assert all(d["entrypoint"].startswith("mlcycle.flows.") for d in deployments), deployments
            mlflow = http.get(f"http://127.0.0.1:{ports['--mlflow-port']}/health")
            assert mlflow.status_code == 200
        # replay without --url: into the service `up` started (a port run.sh's serve never used).
        sent = installed.mlcycle("replay", "--since", "2025-04-20", "--until", "2025-04-21", cwd=project).stdout
        assert _replayed(sent) > 0, sent
    finally:
        installed.mlcycle("down", cwd=project, check=False)
    after = installed.mlcycle("status", cwd=project).stdout
    assert "nothing running" in after, after
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline", "cwd"]) if _in(p, project)]
    assert not leftovers, leftovers


def _replayed(text: str) -> int:
    """Rows `mlcycle replay` says it sent, after checking every one was answered 200."""
    found = re.search(r"([\d,]+) rows in [\d,]+ requests over [\d.]+s: ([\d,]+) ok, 0 4xx, 0 5xx, 0 without", text)
    assert found, text[-3000:]
    rows, ok = (int(g.replace(",", "")) for g in found.groups())
    assert ok == rows, found.group(0)
    return rows


def _in(proc: psutil.Process, project: Path) -> bool:
    try:
        return proc.info["cwd"] is not None and Path(proc.info["cwd"]).is_relative_to(project)
    except (psutil.Error, ValueError):
        return False
