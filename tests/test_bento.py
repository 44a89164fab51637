"""``mlcycle build``: the project's service as a Bento, and that Bento served.

Fast: a build without a champion and a build outside a project are errors naming the fix, with
nothing written; the rendered bentofile parses and carries the config, contract and Feast
definitions; the packed wheel is complete and reproducible; the pins are this environment's.

Slow (end to end): a trained project is built into a test-private BentoML store, a scratch venv
gets only the Bento's own requirements (its ``env/python/install.sh``: the pinned requirements,
then its wheels), ``bentoml serve <tag>`` from that venv answers ``/readyz`` and scores the same
requests exactly as ``mlcycle serve``'s process of the same project; the Bento's Dockerfile starts
the right service; and an installed (not editable) mlcycle builds a Bento with the same wheel.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from tests.conftest import REPO_ROOT, clone_project, copy_project

from mlcycle.net import free_port
from mlcycle.ops import bento
from mlcycle.ops.service_process import ServiceProcess, service_target
from mlcycle.project.config import ConfigError, ProjectConfig

VENV_BIN = Path(sys.executable).parent
TELEMETRY = {"BENTOML_DO_NOT_TRACK": "True", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def cli(*args: str, env: dict[str, str], cwd: Path, mlcycle: Path = VENV_BIN / "mlcycle", timeout: float = 600):
    return subprocess.run([str(mlcycle), *args], env={**os.environ, **TELEMETRY, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def bentos_in(home: Path) -> list[Path]:
    return sorted(p for p in (home / "bentos").glob("*/*") if p.is_dir() and p.name != "latest")


# ----------------------------------------------------------------------------- bad input
def test_build_without_a_champion_names_the_fix_and_writes_nothing(tmp_path: Path) -> None:
    cfg = copy_project(tmp_path / "p")  # config and definitions, no data, no registry
    home = tmp_path / "bentoml"
    with pytest.raises(bento.NoChampion, match="mlcycle train"):
        bento.build(cfg)
    result = cli("build", env={"BENTOML_HOME": str(home)}, cwd=cfg.root, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no champion" in result.stdout and "mlcycle train" in result.stdout, result.stdout
    assert "No Bento was built" in result.stdout
    assert not (cfg.root / bento.STAGING).exists() and not bentos_in(home)
    assert not (cfg.data_path / "mlflow.db").exists()  # a check that reads, and creates no registry


def test_build_with_a_registry_but_no_champion_alias(tmp_path: Path) -> None:
    from mlcycle.registry.aliases import client_for

    cfg = copy_project(tmp_path / "p")
    cfg.data_path.mkdir(parents=True)
    client_for(cfg)  # the registry exists (an experiment), the model does not
    with pytest.raises(bento.NoChampion, match=r"no 'champion' alias.*mlcycle train"):
        bento.build(cfg)
    assert not (cfg.root / bento.STAGING).exists()


def test_build_outside_a_project_names_the_fix(tmp_path: Path) -> None:
    home = tmp_path / "bentoml"
    with pytest.raises(bento.NotAProject, match="mlcycle init"):
        bento.project_config(tmp_path)
    result = cli("build", env={"BENTOML_HOME": str(home)}, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "is not an mlcycle project" in result.stdout and "mlcycle init" in result.stdout, result.stdout
    assert list(tmp_path.iterdir()) == [] and not home.exists()

    (tmp_path / "mlcycle.yaml").write_text("project: half\n")  # a config but no Feast repo
    with pytest.raises(bento.NotAProject, match="no Feast repo"):
        bento.project_config(tmp_path / "mlcycle.yaml")
    (tmp_path / "mlcycle.yaml").write_text("project: half\nnot_a_key: 1\n")
    with pytest.raises(ConfigError, match="not_a_key"):
        bento.project_config(tmp_path)


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = copy_project(tmp_path / "p")
    monkeypatch.setattr(bento, "champion_version", lambda cfg: "1")  # past the check: the build itself fails
    (cfg.root / "bentofile.yaml").write_text('service: "no_such_module:Service"\n')
    with pytest.raises(bento.BuildError, match=r"bentoml build failed.*no_such_module"):
        bento.build(cfg)
    assert not (cfg.root / bento.STAGING).exists()


def test_a_wheel_that_is_not_mlcycles_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "requests-2.0-py3-none-any.whl"
    other.write_bytes(b"")
    with pytest.raises(bento.WheelError, match="not an mlcycle wheel"):
        bento.given_wheel(other, tmp_path / "out")
    with pytest.raises(bento.WheelError, match="no such file"):
        bento.given_wheel(tmp_path / "mlcycle-0.1.0-py3-none-any.whl", tmp_path / "out")
    packed = bento.pack_wheel(tmp_path / "packed")  # `--wheel PATH` with a real one: copied as is
    assert bento.given_wheel(packed, tmp_path / "out").read_bytes() == packed.read_bytes()


# ----------------------------------------------------------------------------- what a Bento carries
def test_the_bentofile_parses_and_carries_the_project_definitions(tmp_path: Path) -> None:
    from bentoml._internal.bento.build_config import BentoBuildConfig, BentoPathSpec

    cfg = copy_project(tmp_path / "p")
    text = bento.bentofile_yaml(cfg)
    raw = yaml.safe_load(text)
    config = BentoBuildConfig.load(raw)  # BentoML's own reading of the file: unknown keys would fail
    assert config.service == service_target(cfg.root) == "services.service:ScoringService"
    assert config.name == "fraud"
    assert config.python.wheels == [f"{bento.STAGING}/{bento.wheel_filename(importlib.metadata.version('mlcycle'))}"]
    assert config.python.requirements_txt == f"{bento.STAGING}/requirements.txt"
    assert {e.name for e in config.envs} >= set(TELEMETRY)
    assert "MLCYCLE_CONFIG" in text and "MLCYCLE_PG_URL" in text  # how the served Bento finds its stores

    (cfg.data_path / "raw").mkdir(parents=True)
    (cfg.data_path / "raw" / "t.parquet").write_bytes(b"")
    (cfg.root / "feature_repo" / "__pycache__").mkdir(exist_ok=True)
    (cfg.root / "feature_repo" / "__pycache__" / "x.pyc").write_bytes(b"")
    spec = BentoPathSpec(config.include, config.exclude, str(cfg.root))
    files = {p.relative_to(cfg.root).as_posix() for p in cfg.root.rglob("*") if p.is_file()}
    carried = {f for f in files if spec.includes(f)}
    assert {"mlcycle.yaml", "feature_repo/feature_store.yaml", "feature_repo/feature_store.scale.yaml",
            "feature_repo/fraud_features.py", "fraud/contract.py", "fraud/features.py",
            "services/service.py"} <= carried  # fmt: skip
    assert not {f for f in carried if f.startswith("data/") or "__pycache__" in f}

    # The reference project's bentofile.yaml is this rendering (kept in step by this test).
    root_cfg = bento.load_config(REPO_ROOT / "mlcycle.yaml")
    assert (REPO_ROOT / "bentofile.yaml").read_text() == bento.bentofile_yaml(root_cfg)


def test_a_yaml_contract_and_the_generic_service(tmp_path: Path) -> None:
    cfg = copy_project(tmp_path / "p")
    shutil.rmtree(cfg.root / "services")
    raw = yaml.safe_load((cfg.root / "mlcycle.yaml").read_text())
    raw["table"]["contract"] = "contract.yaml"
    raw["table"].pop("transformations")
    (cfg.root / "mlcycle.yaml").write_text(yaml.safe_dump(raw))
    (cfg.root / "contract.yaml").write_text("columns: {}\n")
    cfg = bento.project_config(cfg.root)
    config = yaml.safe_load(bento.bentofile_yaml(cfg))
    assert config["service"] == "mlcycle.service:ScoringService"
    assert "/contract.yaml" in config["include"]
    assert not any("services" in p or "fraud" in p for p in config["include"])


def test_the_packed_wheel_is_complete_and_reproducible(tmp_path: Path) -> None:
    first = bento.pack_wheel(tmp_path / "a")
    second = bento.pack_wheel(tmp_path / "b")
    assert first.name == bento.wheel_filename(importlib.metadata.version("mlcycle"))
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        names = set(zf.namelist())
        info = f"mlcycle-{importlib.metadata.version('mlcycle')}.dist-info"
        assert {"mlcycle/service.py", "mlcycle/ops/bento.py", "mlcycle/templates/bentofile.yaml.j2",
                f"{info}/METADATA", f"{info}/entry_points.txt", f"{info}/WHEEL", f"{info}/RECORD"} <= names  # fmt: skip
        assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
        assert "Requires-Dist: bentoml==1.4.39" in zf.read(f"{info}/METADATA").decode()
        installed = importlib.metadata.distribution("mlcycle")
        assert zf.read(f"{info}/entry_points.txt").decode() == installed.read_text("entry_points.txt")
        assert "mlcycle = mlcycle.cli" in installed.read_text("entry_points.txt")  # the command
        for line in zf.read(f"{info}/RECORD").decode().splitlines():  # every entry's hash holds
            name, digest, size = line.rsplit(",", 2)
            if digest:
                data = zf.read(name)
                assert int(size) == len(data)
                assert digest == bento._record_hash(data)
        import mlcycle

        assert (Path(mlcycle.__file__).parent / "service.py").read_bytes() == zf.read("mlcycle/service.py")


def test_requirements_are_pinned_to_this_environment() -> None:
    pins = dict(line.split("==") for line in bento.pinned_requirements())
    assert pins["bentoml"] == "1.4.39" and pins["feast"] == "0.67.0" and pins["mlflow"] == "3.17.2"
    assert "redis" in pins and "psycopg" in pins  # feast's extras are followed
    assert "mlcycle" not in pins and "pytest" not in pins  # the wheel itself; no dev extra
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version


# ----------------------------------------------------------------------------- end to end
def uv_command() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv is needed to make the Bento's venv (make test installs it in ~/.local/bin)")
    return found


def install_bento_env(bento_path: Path, venv: Path) -> float:
    """A fresh venv with only the Bento's requirements, installed by the Bento's own script."""
    uv = uv_command()
    started = time.monotonic()
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=120)
    # The script's ``uv pip install`` targets the active venv; UV_PYTHON names it too, so no variable
    # inherited from the test's own environment (``uv run`` sets some) can send it elsewhere.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONDA_PREFIX", "UV_PROJECT_ENVIRONMENT")}
    env |= {"VIRTUAL_ENV": str(venv), "UV_PYTHON": str(venv / "bin" / "python"),
            "PATH": f"{Path(uv).parent}:{os.environ['PATH']}"}  # fmt: skip
    result = subprocess.run(["bash", str(bento_path / "env" / "python" / "install.sh")], env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    probe = [str(venv / "bin" / "python"), "-c", "import mlcycle; print(mlcycle.__file__)"]
    where = subprocess.run(probe, capture_output=True, text=True, env={**env, "PYTHONPATH": ""}, timeout=300)
    # On a failure, what the Bento's own install script did (its ``set -x`` trace) is the evidence.
    trace = f"--- install.sh:\n{result.stdout[-3000:]}{result.stderr[-6000:]}"
    assert where.returncode == 0, f"{where.stderr[-1500:]}\n{trace}"
    return time.monotonic() - started


def scores(client: httpx.Client, bodies: list[dict]) -> list[dict]:
    out = []
    for body in bodies:
        r = client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        out.append({k: answer[k] for k in ("score", "decision", "model_version", "variant", "features_missing")})
    return out


@pytest.mark.slow
def test_a_bento_built_and_served_scores_as_mlcycle_serve(project: ProjectConfig, prefect_server, tmp_path: Path):
    from fraud.traffic import request_body

    from mlcycle.flows import load_flow
    from servers import running_server, server_env

    cfg = clone_project(project, tmp_path / "p")
    assert load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))["alias"] == "champion"
    home = tmp_path / "bentoml"
    timings: dict[str, float] = {}

    elsewhere = tmp_path / "elsewhere"  # built from outside the project
    elsewhere.mkdir()
    started = time.monotonic()
    built = cli("build", "--config", str(cfg.root / "mlcycle.yaml"), env={"BENTOML_HOME": str(home)}, cwd=elsewhere)
    timings["build"] = time.monotonic() - started
    assert built.returncode == 0, built.stdout + built.stderr
    tag = re.search(r"Built Bento (\S+)", built.stdout).group(1)
    assert f"MLCYCLE_CONFIG={cfg.root / 'mlcycle.yaml'} bentoml serve {tag}" in built.stdout.replace("\n", "")
    name, version = tag.split(":")
    path = home / "bentos" / name / version
    assert bentos_in(home) == [path]

    # What it carries, and nothing of the data.
    src = {p.relative_to(path / "src").as_posix() for p in (path / "src").rglob("*") if p.is_file()}
    assert {"mlcycle.yaml", "feature_repo/feature_store.yaml", "feature_repo/fraud_features.py",
            "fraud/contract.py", "services/service.py"} <= src  # fmt: skip
    assert not [f for f in src if f.startswith("data/")]
    wheels = sorted(p.name for p in (path / "env" / "python" / "wheels").glob("*.whl"))
    assert wheels == [bento.wheel_filename(importlib.metadata.version("mlcycle"))]

    # The image starts this service: the Dockerfile's entrypoint serves the Bento, whose service is ours.
    dockerfile = (path / "env" / "docker" / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \[ "/home/bentoml/bento/env/docker/entrypoint\.sh" \]$', dockerfile, re.M)
    assert "install.sh" in dockerfile  # the same install as the venv below
    assert 'bentoml serve "$@" "$BENTO_PATH"' in (path / "env" / "docker" / "entrypoint.sh").read_text()
    assert yaml.safe_load((path / "bento.yaml").read_text())["service"] == service_target(cfg.root)

    venv = tmp_path / "bento-venv"
    timings["venv install"] = install_bento_env(path, venv)
    probe = [str(venv / "bin" / "python"), "-c", "import mlcycle; print(mlcycle.__file__)"]
    where = subprocess.run(probe, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    assert where.stdout.startswith(str(venv)), where.stdout  # the Bento's wheel, not this checkout

    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
    at = tx["event_timestamp"].max() + pd.Timedelta(minutes=1)
    stamp = at.isoformat().replace("+00:00", "Z")
    rows = tx.sample(60, random_state=3)
    bodies = [{"request": {**request_body(r)["request"], "timestamp": stamp}} for _, r in rows.iterrows()]

    port = free_port()
    cmd = [str(venv / "bin" / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)]
    env = server_env(BENTOML_HOME=str(home), MLCYCLE_CONFIG=str(cfg.root / "mlcycle.yaml"), PYTHONPATH="",
                     PATH=f"{venv / 'bin'}:{os.environ['PATH']}", VIRTUAL_ENV=str(venv))  # fmt: skip
    started = time.monotonic()
    with running_server(cmd, health_path="/readyz", port=port, log_path=tmp_path / "bento.log", env=env,
                        cwd=tmp_path, timeout=240) as served:  # fmt: skip
        timings["bento ready"] = time.monotonic() - started
        with httpx.Client(base_url=served.base_url, trust_env=False, timeout=30) as client:
            from_bento = scores(client, bodies)
    with ServiceProcess(cfg) as service, httpx.Client(base_url=service.url, trust_env=False, timeout=30) as client:
        from_serve = scores(client, bodies)
    # Exactly: the same code (the wheel is this checkout's package), the same pinned libraries, the
    # same model artifact and online store rows, the same request time: the same float64 bits.
    assert from_bento == from_serve
    assert {s["model_version"] for s in from_bento} == {"1"}
    assert len({s["score"] for s in from_bento}) > 10  # real, varied scores, not a constant

    # An installed mlcycle (a wheel in a venv, no source checkout) builds a Bento too, with the same wheel.
    direct = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
                             "print(m.distribution('mlcycle').read_text('direct_url.json'))"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert '"editable"' not in direct.stdout and ".whl" in direct.stdout, direct.stdout
    started = time.monotonic()
    again = cli("build", env={"BENTOML_HOME": str(home), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
                              "VIRTUAL_ENV": str(venv), "PYTHONPATH": ""},
                cwd=cfg.root, mlcycle=venv / "bin" / "mlcycle")  # fmt: skip
    timings["build from installed"] = time.monotonic() - started
    assert again.returncode == 0, again.stdout + again.stderr
    second = home / "bentos" / name / re.search(r"Built Bento \S+:(\S+)", again.stdout).group(1)

    def wheel_files(bento_path: Path) -> dict[str, str]:
        (whl,) = (bento_path / "env" / "python" / "wheels").glob("*.whl")
        with zipfile.ZipFile(whl) as zf:
            return {n: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist() if n.startswith("mlcycle/")}

    assert wheel_files(second) == wheel_files(path)
    print("\n" + "  ".join(f"{k}: {v:.1f}s" for k, v in timings.items()))
