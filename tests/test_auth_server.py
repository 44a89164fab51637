"""Authenticated identities from a real component: one ``mlflow server --app-name basic-auth`` on
this machine's PostgreSQL (a database of its own, dropped at the end) and the registry gate beside
it (docs/governance.md).

What is checked, with oracles independent of the code under test — raw HTTP calls to MLflow's REST
API with the admin's credentials read the aliases back:

- a trainer logs runs with its own credentials and, through the gate, registers a version that
  becomes the challenger;
- a trainer cannot move ``champion``: not through MLflow's API with its own credentials (MLflow
  answers 403: no EDIT on the registered model), not through the gate (refused, rule ``role``),
  and nothing moves;
- an approver, through the gate, approves and promotes;
- a wrong password, or one the admin has since changed, is refused (401) with the rule named.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlcycle.ops import auth_server as auth
from mlcycle.project.config import GovernanceSpec
from mlcycle.registry import aliases as registry
from mlcycle.registry import gate
from mlcycle.registry import governance as gov

pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs flask-wtf (the auth extra)")
psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.slow  # one MLflow server and one gate for the module: ~25 s to start, ~2 min in all

PG = os.environ.get("MLCYCLE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
MODEL, EXPERIMENT = "fraud-model", "training"
DENIED = r"PERMISSION_DENIED|Permission denied"


@dataclass
class World:
    url: str
    gate_url: str
    admin: auth.Credentials
    registrar: auth.Credentials
    trainer: auth.Credentials
    approver: auth.Credentials
    lead: auth.Credentials
    experiment_id: str
    backend_uri: str
    processes: tuple[auth.Process, ...]
    workdir: Path


def _pg_available() -> bool:
    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _drop(database: str) -> None:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not _pg_available():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    workdir = tmp_path_factory.mktemp("auth")
    database = f"mlcycle_test_{secrets.token_hex(4)}"
    backend, auth_db = f"{PG}/{database}", f"{PG}/{database}_auth"
    admin = auth.Credentials.generate("admin")
    registrar = auth.Credentials.generate(gate.REGISTRAR)
    trainer, approver = auth.Credentials.generate("trainer"), auth.Credentials.generate("approver")
    lead = auth.Credentials.generate("lead")  # both roles: separation of duties still binds
    config = workdir / "mlcycle.yaml"
    config.write_text(
        f"model: {{name: {MODEL}}}\n"
        f"tracking: {{experiment: {EXPERIMENT}}}\n"
        "rollout: {require_approval: true}\n"
        "governance:\n  roles: {trainer: [trainer, lead], approver: [approver, lead], operator: [approver]}\n"
    )
    processes: list[auth.Process] = []
    try:
        started = time.monotonic()
        server = auth.start_server(workdir, backend, auth_db, admin)
        processes.append(server)
        experiment_id = auth.provision(server.url, admin, auth.Accounts(registrar, (trainer, lead), (approver,)),
                                       EXPERIMENT, MODEL)  # fmt: skip
        gate_process = auth.start_gate(workdir, config, server.url, registrar, promotion_log_uri=backend)
        processes.append(gate_process)
        print(f"\nmlflow auth server healthy after {server.startup_s:.1f}s, gate after {gate_process.startup_s:.1f}s,"
              f" set up in {time.monotonic() - started:.1f}s")  # fmt: skip
        yield World(server.url, gate_process.url, admin, registrar, trainer, approver, lead, experiment_id,
                    backend, tuple(processes), workdir)  # fmt: skip
    finally:
        for process in reversed(processes):
            auth.stop(process)
        for name in (database, f"{database}_auth"):
            _drop(name)


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def as_user(user: auth.Credentials) -> Iterator[None]:
    """MLflow's client reads its credentials from the environment: act as ``user`` for a while."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user.auth
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def log_run(w: World, user: auth.Credentials, gates: str = "passed") -> tuple[str, str]:
    """A training run logged with ``user``'s credentials: (run_id, the model artifact's URI)."""
    with as_user(user):
        client = MlflowClient(w.url)
        run = client.create_run(w.experiment_id, tags={gov.GATES_TAG: gates})
        client.log_metric(run.info.run_id, "test.roc_auc", 0.9)
        client.log_text(run.info.run_id, "flavor: test\n", "model/MLmodel")
        client.set_terminated(run.info.run_id)
    return run.info.run_id, f"{run.info.artifact_uri}/model"


def rest(
    w: World, user: auth.Credentials | tuple[str, str], method: str, path: str, **kwargs: object
) -> httpx.Response:
    creds = user.auth if isinstance(user, auth.Credentials) else user
    with httpx.Client(trust_env=False, timeout=30.0) as http:
        return http.request(method, w.url + path, auth=creds, **kwargs)  # type: ignore[arg-type]


def alias(w: World, name: str) -> str | None:
    """The version ``name`` points at, read by the admin straight from MLflow's REST API."""
    response = rest(w, w.admin, "GET", "/api/2.0/mlflow/registered-models/alias", params={"name": MODEL, "alias": name})
    if response.status_code in (400, 404) and "not found" in response.text.lower():
        return None
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"]["version"])


def version_tags(w: World, version: str) -> dict[str, str]:
    response = rest(w, w.admin, "GET", "/api/2.0/mlflow/model-versions/get", params={"name": MODEL, "version": version})
    assert response.status_code == 200, response.text
    return {t["key"]: t["value"] for t in response.json()["model_version"].get("tags", [])}


def gate_as(w: World, user: auth.Credentials, password: str | None = None) -> gate.GateClient:
    return gate.GateClient(w.gate_url, user.username, user.password if password is None else password)


def log_rows(w: World) -> list[dict]:
    engine = sa.create_engine(w.backend_uri)
    try:
        with engine.connect() as conn:
            query = (
                "SELECT alias, from_version, to_version, actor, reason, action FROM mlcycle_promotion_log ORDER BY id"
            )
            return [dict(r) for r in conn.execute(sa.text(query)).mappings()]
    finally:
        engine.dispose()


def registered(w: World) -> str:
    run_id, source = log_run(w, w.trainer)
    return gate_as(w, w.trainer).register(run_id, source, tags={"mlcycle.threshold": "0.5"})


def champion_v(w: World) -> str:
    """A champion in place (registered by the trainer, approved and promoted by the approver)."""
    if (current := alias(w, "champion")) is not None:
        return current
    version = registered(w)
    gate_as(w, w.approver).approve(version, "first model")
    gate_as(w, w.approver).promote(version, "first model")
    return version


# ----------------------------------------------------------------------------- tests
def test_a_trainer_logs_runs_and_registers_a_challenger_through_the_gate(world: World) -> None:
    version = registered(world)

    assert alias(world, "challenger") == version
    tags = version_tags(world, version)
    assert tags[gov.TRAINED_BY_TAG] == "trainer" and tags[gov.STATE_TAG] == gov.PENDING
    assert tags["mlcycle.threshold"] == "0.5" and tags[gov.GATES_TAG] == "passed"
    row = log_rows(world)[-1]
    assert (row["alias"], row["to_version"], row["actor"]) == ("challenger", version, "trainer")
    assert gate_as(world, world.trainer).whoami() == gov.Principal("trainer", True, gate.VIA)


def test_a_trainer_cannot_move_champion_through_mlflows_api(world: World) -> None:
    champion = champion_v(world)
    challenger = registered(world)
    t = world.trainer

    set_alias = rest(world, t, "POST", "/api/2.0/mlflow/registered-models/alias",
                     json={"name": MODEL, "alias": "champion", "version": challenger})  # fmt: skip
    delete_alias = rest(world, t, "DELETE", "/api/2.0/mlflow/registered-models/alias",
                        json={"name": MODEL, "alias": "champion"})  # fmt: skip
    approved = {"key": gov.STATE_TAG, "value": gov.APPROVED}
    forge_approval = rest(world, t, "POST", "/api/2.0/mlflow/model-versions/set-tag",
                          json={"name": MODEL, "version": challenger, **approved})  # fmt: skip
    run_id, source = log_run(world, t)
    own_version = rest(world, t, "POST", "/api/2.0/mlflow/model-versions/create",
                       json={"name": MODEL, "source": source, "run_id": run_id})  # fmt: skip
    production = {"stage": "Production", "archive_existing_versions": True}
    stage = rest(world, t, "POST", "/api/2.0/mlflow/model-versions/transition-stage",
                 json={"name": MODEL, "version": challenger, **production})  # fmt: skip
    assert [r.status_code for r in (set_alias, delete_alias, forge_approval, own_version, stage)] == [403] * 5
    with as_user(t), pytest.raises(MlflowException, match=DENIED):
        MlflowClient(world.url, world.url).set_registered_model_alias(MODEL, "champion", challenger)

    assert alias(world, "champion") == champion
    assert version_tags(world, challenger)[gov.STATE_TAG] == gov.PENDING


def test_a_trainer_claiming_to_be_the_approver_in_its_own_process_moves_nothing(world: World) -> None:
    """mlcycle's own code paths (what the CLI and the flows call), run by a trainer who names
    itself the approver (``MLCYCLE_PRINCIPAL``, open roles, no approval required): the rules pass,
    the write does not — MLflow refuses the trainer's credentials — and no log row claims a move."""
    champion = champion_v(world)
    challenger = registered(world)
    log = registry.PromotionLog(world.backend_uri)
    before = len(log_rows(world))
    forged = gov.Principal("approver", True, "claimed")
    with as_user(world.trainer):
        client = MlflowClient(world.url, world.url)
        with pytest.raises(MlflowException, match=DENIED):
            gov.promote(client, log, GovernanceSpec(), MODEL, challenger, "forged", forged, require_approval=False)
        with pytest.raises(MlflowException, match=DENIED):
            registry.move_alias(client, log, MODEL, registry.CHAMPION, challenger, "direct", "approver")
    log.engine.dispose()
    assert alias(world, "champion") == champion
    assert len(log_rows(world)) == before


def test_a_trainer_cannot_move_champion_through_the_gate(world: World) -> None:
    champion = champion_v(world)
    challenger = registered(world)
    before = len(log_rows(world))

    with pytest.raises(gov.Refused, match=r"refused \(role\): trainer may not make v\d+ champion") as promoted:
        gate_as(world, world.trainer).promote(challenger, "I trained it, it is good")
    with pytest.raises(gov.Refused, match=r"refused \(role\).*approver role") as approved:
        gate_as(world, world.trainer).approve(challenger, "self-approval")

    assert promoted.value.rule == approved.value.rule == "role"
    assert alias(world, "champion") == champion and alias(world, "challenger") == challenger
    assert version_tags(world, challenger)[gov.STATE_TAG] == gov.PENDING
    refusals = log_rows(world)[before:]
    assert [(r["action"], r["actor"]) for r in refusals] == [(gov.REFUSED_ACTION, "trainer")] * 2


def test_an_approver_approves_and_promotes_through_the_gate_but_not_through_mlflow(world: World) -> None:
    champion_v(world)
    challenger = registered(world)
    approver = gate_as(world, world.approver)

    direct = rest(world, world.approver, "POST", "/api/2.0/mlflow/registered-models/alias",
                  json={"name": MODEL, "alias": "champion", "version": challenger})  # fmt: skip
    assert direct.status_code == 403  # READ only: every change goes through the gate's rules
    with pytest.raises(gov.Refused, match=r"refused \(approval-required\)"):
        approver.promote(challenger, "before approval")
    assert "approved by approver" in approver.approve(challenger, "canary looked right")
    events = approver.promote(challenger, "canary passed")

    assert alias(world, "champion") == challenger and alias(world, "challenger") is None
    assert [e["alias"] for e in events] == ["champion", "challenger"]
    tags = version_tags(world, challenger)
    assert (tags[gov.STATE_TAG], tags[gov.BY_TAG], tags[gov.AUTHENTICATED_TAG]) == (gov.APPROVED, "approver", "true")
    row = log_rows(world)[-2]
    assert (row["alias"], row["to_version"], row["actor"]) == ("champion", challenger, "approver")
    assert "approved by approver" in row["reason"]


def test_a_wrong_password_is_refused_with_the_rule_named(world: World) -> None:
    champion = alias(world, "champion")
    wrong = gate_as(world, world.approver, password="not-the-password")
    rule = r"refused \(authentication\): .*did not accept the password of 'approver' \(wrong, expired or changed\)"
    with pytest.raises(gate.Unauthenticated, match=rule) as refused:
        wrong.promote("1", "with a guessed password")
    assert refused.value.rule == "authentication"
    with httpx.Client(trust_env=False) as http:  # the raw answer: 401, the rule in the body
        raw = http.post(world.gate_url + "/v1/promote", json={"version": "1"}, auth=("approver", "nope"))
        anonymous = http.post(world.gate_url + "/v1/promote", json={"version": "1"})
    assert raw.status_code == anonymous.status_code == 401
    assert raw.json()["rule"] == anonymous.json()["rule"] == "authentication"
    assert "no credentials" in anonymous.json()["error"]
    assert rest(world, ("approver", "nope"), "GET", gate.CURRENT_USER_PATH).status_code == 401  # MLflow agrees
    assert alias(world, "champion") == champion


def test_a_changed_password_makes_the_old_one_fail(world: World) -> None:
    user = auth.Credentials.generate("rotating")
    auth.create_user(world.url, world.admin, user)
    assert gate_as(world, user).whoami().name == "rotating"

    new_password = secrets.token_urlsafe(24)
    auth.set_password(world.url, world.admin, user.username, new_password)

    with pytest.raises(gate.Unauthenticated, match=r"refused \(authentication\)"):
        gate_as(world, user).whoami()
    assert gate_as(world, user, password=new_password).whoami() == gov.Principal("rotating", True, gate.VIA)
    assert rest(world, user, "GET", gate.CURRENT_USER_PATH).status_code == 401


def test_no_secret_on_a_command_line_and_the_secret_files_are_private(world: World) -> None:
    secrets_ = [world.admin.password, world.registrar.password]
    for process in world.processes:
        cmdline = Path(f"/proc/{process.proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert not [s for s in secrets_ if s in cmdline], f"{process.name} shows a secret in ps"
    for name in ("basic_auth.ini", "registrar.password"):
        assert (world.workdir / name).stat().st_mode & 0o777 == 0o600
    logs = "".join(p.log_path.read_text(errors="replace") for p in world.processes)
    assert not [s for s in secrets_ if s in logs]


def test_whoever_registered_a_version_may_not_approve_it_even_holding_both_roles(world: World) -> None:
    champion_v(world)
    run_id, source = log_run(world, world.lead)
    version = gate_as(world, world.lead).register(run_id, source)
    with pytest.raises(gov.Refused, match=r"refused \(separation-of-duties\): lead may not approve") as refused:
        gate_as(world, world.lead).approve(version, "mine, and good")
    assert refused.value.rule == "separation-of-duties"
    assert version_tags(world, version)[gov.STATE_TAG] == gov.PENDING
    assert "approved by approver" in gate_as(world, world.approver).approve(version, "someone else decides")


def test_the_gate_registers_only_gated_runs_and_their_own_artifacts(world: World) -> None:
    trainer = gate_as(world, world.trainer)
    failed_run, failed_source = log_run(world, world.trainer, gates="failed")
    other_run, _ = log_run(world, world.trainer)
    challenger = alias(world, "challenger")
    with pytest.raises(gov.Refused, match=r"refused \(gates\)"):
        trainer.register(failed_run, failed_source)
    with pytest.raises(gov.Refused, match=r"refused \(source\)"):
        trainer.register(other_run, failed_source)
    with pytest.raises(gov.Refused, match=r"refused \(tags\)"):
        trainer.register(other_run, f"{failed_source.rsplit('/', 3)[0]}/{other_run}/artifacts/model",
                         tags={gov.STATE_TAG: gov.APPROVED})  # fmt: skip
    assert alias(world, "challenger") == challenger


def test_the_principal_of_a_process_is_verified_by_the_server_and_the_os_user_without_one(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLCYCLE_PRINCIPAL", raising=False)
    local = gate.principal_for("sqlite:///data/mlflow.db")
    assert not local.authenticated and local.via == "os-user" and local.name.startswith("os:")
    assert "unauthenticated" in str(local)

    with as_user(world.trainer):
        assert gate.principal_for(world.url) == gov.Principal("trainer", True, gate.VIA)
    with as_user(auth.Credentials("trainer", "guessed")), pytest.raises(gate.Unauthenticated):
        gate.principal_for(world.url)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    with pytest.raises(gate.Unauthenticated, match="no credentials"):
        gate.principal_for(world.url, environ={})


def test_rollback_and_promotion_on_behalf_of_an_approval_need_their_roles(world: World) -> None:
    champion_v(world)
    challenger = registered(world)
    trainer, approver = gate_as(world, world.trainer), gate_as(world, world.approver)
    approver.approve(challenger, "canary to come")
    with pytest.raises(gov.Refused, match=r"refused \(role\): trainer may not carry out the approval"):
        trainer.promote(challenger, "the approval is there", on_behalf_of_approval=True)
    approver.promote(challenger, "canary passed", on_behalf_of_approval=True)  # approver also holds operator
    assert alias(world, "champion") == challenger

    with pytest.raises(gov.Refused, match=r"refused \(role\): trainer may not roll back"):
        trainer.rollback("I prefer the old one")
    assert alias(world, "champion") == challenger
    events = approver.rollback("alerts after the promotion")
    back = alias(world, "champion")
    assert back is not None and back != challenger
    assert [(e["alias"], e["action"]) for e in events if e["alias"] == "champion"] == [("champion", "rollback")]


def test_a_trainer_cannot_move_champion_through_the_cli_or_the_rollout_flow(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI and the rollout flow, configured for the gate (MLCYCLE_REGISTRY_GATE_URL) and run with
    the trainer's credentials: every route to champion refused with the rule named, nothing moves;
    the approver's same commands succeed."""
    from typer.testing import CliRunner

    from mlcycle.cli.app import app
    from mlcycle.flows import rollout as rollout_flow
    from mlcycle.project.config import load_config

    champion = champion_v(world)
    challenger = registered(world)
    config = world.workdir / "mlcycle-scale.yaml"
    server = (
        f"tracking: {{experiment: {EXPERIMENT}, tracking_uri: '{world.url}', promotion_log_uri: '{world.backend_uri}'}}"
    )
    config.write_text(
        (world.workdir / "mlcycle.yaml").read_text().replace(f"tracking: {{experiment: {EXPERIMENT}}}", server)
    )
    assert world.url in config.read_text()
    monkeypatch.setenv(gate.GATE_URL_ENV, world.gate_url)
    for key, value in zip(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), world.trainer.auth, strict=True):
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    for args in (["promote", challenger], ["approve", challenger, "--note", "mine"], ["rollback"]):
        out = runner.invoke(app, [*args, "--config", str(config)])
        assert out.exit_code == 1 and "refused (role): trainer may not" in out.output, (args, out.output)
    cfg = load_config(config)
    why = rollout_flow.promote.fn(cfg, (challenger, champion), "canary passed")  # the flow's promotion step
    assert why is not None and "refused (role): trainer may not carry out the approval" in why
    assert alias(world, "champion") == champion and alias(world, "challenger") == challenger

    for key, value in zip(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), world.approver.auth, strict=True):
        monkeypatch.setenv(key, value)
    approved = runner.invoke(app, ["approve", challenger, "--note", "evidence read", "--config", str(config)])
    assert approved.exit_code == 0 and "approved by approver" in approved.output, approved.output
    assert "unauthenticated" not in approved.output
    promoted = runner.invoke(app, ["promote", challenger, "--config", str(config)])
    assert promoted.exit_code == 0, promoted.output
    assert f"champion: v{champion} → v{challenger}" in promoted.output
    assert alias(world, "champion") == challenger
