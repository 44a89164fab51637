"""Approvals, roles and separation of duties (mlcycle.registry.governance), on a real MLflow
registry (SQLite) and the real promotion log. The versions are registered by hand, with the tags a
training leaves; what is checked is what the rules promise, each refusal naming its rule, moving
nothing and leaving a row in the log."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from mlcycle.project.config import GovernanceSpec, ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry import governance as gov

NAME = "m"
TRAINER = gov.Principal("flow:train/x", False, "flow")
ALICE = gov.Principal("alice", True, "test")
BOB = gov.Principal("bob", True, "test")


@pytest.fixture
def world(tmp_path: Path) -> tuple[MlflowClient, registry.PromotionLog, ProjectConfig]:
    cfg = ProjectConfig.model_validate({"model": {"name": NAME}})
    cfg.root = tmp_path
    client = registry.client_for(cfg)
    client.create_registered_model(NAME)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    return client, log, cfg


def register(client: MlflowClient, log: registry.PromotionLog, tmp: Path, trained_by: str, alias: str) -> str:
    (tmp / "artifact").mkdir(exist_ok=True)
    version = str(client.create_model_version(NAME, source=str(tmp / "artifact")).version)
    client.set_model_version_tag(NAME, version, "mlcycle.threshold", "0.5")
    gov.mark_registered(client, NAME, version, trained_by, "event:mlcycle.drift.detected")
    registry.move_alias(client, log, NAME, alias, version, "gates passed", trained_by)
    return version


def refusals(log: registry.PromotionLog) -> list[registry.PromotionEvent]:
    return [e for e in log.history(NAME) if e.action == gov.REFUSED_ACTION]


def test_an_approver_other_than_the_trainer_approves_and_the_rollout_then_promotes(world, tmp_path) -> None:
    client, log, _ = world
    v1 = register(client, log, tmp_path, TRAINER.name, registry.CHAMPION)
    v2 = register(client, log, tmp_path, TRAINER.name, registry.CHALLENGER)
    spec = GovernanceSpec()  # open: no roles declared

    approval = gov.decide(client, log, spec, NAME, v2, ALICE, True, "canary looked right")
    assert approval.valid and approval.by == "alice" and approval.note == "canary looked right"
    tags = client.get_model_version(NAME, v2).tags
    assert tags[gov.STATE_TAG] == "approved" and tags[gov.AUTHENTICATED_TAG] == "true"
    row = log.history(NAME)[0]
    assert (row.alias, row.action, row.to_version, row.actor) == ("approval", "approved", v2, "alice")

    moved = gov.promote(client, log, spec, NAME, v2, "canary passed", TRAINER, True, on_behalf_of_approval=True)
    assert moved[0].to_version == v2 and "approved by alice" in moved[0].reason
    assert str(registry.version_by_alias(client, NAME, registry.CHAMPION).version) == v2
    old = client.get_model_version(NAME, v1).tags  # the champion it replaced no longer serves: archived
    assert (old[gov.STATE_TAG], old[gov.ARCHIVED_NOTE_TAG]) == ("archived", f"replaced by v{v2} as champion")
    assert gov.approval_of(client.get_model_version(NAME, v1)).state == "archived"


def test_self_approval_is_refused_named_and_logged_unless_the_policy_names_the_principal(world, tmp_path) -> None:
    client, log, _ = world
    register(client, log, tmp_path, "alice", registry.CHAMPION)
    v2 = register(client, log, tmp_path, "alice", registry.CHALLENGER)
    with pytest.raises(gov.Refused, match=r"separation-of-duties.*trained by alice") as caught:
        gov.decide(client, log, GovernanceSpec(), NAME, v2, ALICE, True, "mine is good")
    assert caught.value.rule == "separation-of-duties"
    assert client.get_model_version(NAME, v2).tags[gov.STATE_TAG] == "pending"
    (refused,) = refusals(log)
    assert refused.actor == "alice" and refused.to_version == v2 and "separation-of-duties" in refused.reason

    policy = GovernanceSpec(self_approval=["alice"])
    approval = gov.decide(client, log, policy, NAME, v2, ALICE, True, "one-person team")
    assert approval.valid and "self-approval" in log.history(NAME)[0].reason


def test_a_principal_without_the_role_cannot_approve_or_move_champion_by_the_cli(world, tmp_path, monkeypatch):
    client, log, _ = world
    v1 = register(client, log, tmp_path, TRAINER.name, registry.CHAMPION)
    v2 = register(client, log, tmp_path, TRAINER.name, registry.CHALLENGER)
    spec = GovernanceSpec(roles={"trainer": ["bob"], "approver": ["group:leads"]}, groups={"leads": ["alice"]})
    with pytest.raises(gov.Refused, match=r"bob may not approve v2: that needs the approver role, which alice hold"):
        gov.decide(client, log, spec, NAME, v2, BOB, True, "")
    with pytest.raises(gov.Refused, match="role"):
        gov.promote(client, log, spec, NAME, v2, "by hand", BOB, False)
    assert gov.decide(client, log, spec, NAME, v2, ALICE, True, "").valid

    # The CLI: the principal is who the process runs as; the trainer's `mlcycle promote` is refused.
    from mlcycle.cli.app import app

    config = tmp_path / "mlcycle.yaml"
    config.write_text(
        f"model: {{name: {NAME}}}\ngovernance:\n  roles: {{trainer: [bob], approver: [alice]}}\n"
        "rollout: {require_approval: true}\n"
    )
    monkeypatch.setenv("MLCYCLE_PRINCIPAL", "bob")
    out = CliRunner().invoke(app, ["promote", v2, "--config", str(config)])
    assert out.exit_code == 1 and "refused (role)" in out.output, out.output
    assert str(registry.version_by_alias(client, NAME, registry.CHAMPION).version) == v1
    out = CliRunner().invoke(app, ["approve", v2, "--who", "alice", "--config", str(config)])
    assert out.exit_code == 2 and "--who does not apply" in out.output
    assert len(refusals(log)) == 3  # two in-process attempts and the CLI's, each on the record


def test_an_approval_does_not_outlive_a_changed_candidate(world, tmp_path) -> None:
    client, log, _ = world
    register(client, log, tmp_path, TRAINER.name, registry.CHAMPION)
    v2 = register(client, log, tmp_path, TRAINER.name, registry.CHALLENGER)
    gov.decide(client, log, GovernanceSpec(), NAME, v2, ALICE, True, "")
    client.set_model_version_tag(NAME, v2, "mlcycle.threshold", "0.05")  # scores differently now
    approval = gov.approval_of(client.get_model_version(NAME, v2))
    assert approval.state == "approved" and not approval.valid and "VOID" in approval.line()
    with pytest.raises(gov.Refused, match="approval-required"):
        gov.promote(client, log, GovernanceSpec(), NAME, v2, "canary passed", TRAINER, True, on_behalf_of_approval=True)
    # The same person may decide again on what the candidate is now.
    assert gov.decide(client, log, GovernanceSpec(), NAME, v2, ALICE, True, "re-checked at 0.05").valid


def test_a_rejected_version_loses_challenger_and_never_serves(world, tmp_path) -> None:
    client, log, _ = world
    v1 = register(client, log, tmp_path, TRAINER.name, registry.CHAMPION)
    v2 = register(client, log, tmp_path, TRAINER.name, registry.CHALLENGER)
    gov.decide(client, log, GovernanceSpec(), NAME, v2, ALICE, False, "slices regressed")
    assert registry.version_by_alias(client, NAME, registry.CHALLENGER) is None
    with pytest.raises(gov.Refused, match="rejected"):
        gov.promote(client, log, GovernanceSpec(), NAME, v2, "by hand", ALICE, False)  # even without require_approval
    assert str(registry.version_by_alias(client, NAME, registry.CHAMPION).version) == v1
    with pytest.raises(gov.Refused, match="not-the-candidate"):  # no longer the candidate: nothing to decide
        gov.decide(client, log, GovernanceSpec(), NAME, v2, BOB, True, "")


def test_only_the_candidate_with_gates_on_record_is_decided(world, tmp_path) -> None:
    client, log, _ = world
    v1 = register(client, log, tmp_path, TRAINER.name, registry.CHAMPION)
    with pytest.raises(gov.Refused, match=r"not-the-candidate.*challenger is none"):
        gov.decide(client, log, GovernanceSpec(), NAME, v1, ALICE, True, "")
    v2 = register(client, log, tmp_path, TRAINER.name, registry.CHALLENGER)
    client.delete_model_version_tag(NAME, v2, gov.GATES_TAG)
    with pytest.raises(gov.Refused, match="gates"):
        gov.decide(client, log, GovernanceSpec(), NAME, v2, ALICE, True, "")
    assert len(refusals(log)) == 2


def test_an_os_user_is_recorded_as_unauthenticated(monkeypatch) -> None:
    monkeypatch.delenv("MLCYCLE_PRINCIPAL", raising=False)
    me = gov.current_principal()
    assert me.name.startswith("os:") and not me.authenticated and "unauthenticated" in str(me)


def test_the_audit_of_a_version_reads_its_run_gates_canary_decision_and_moves(world, tmp_path) -> None:
    """What `mlcycle audit VERSION` shows, built by hand here: a run with a gates report, a version
    with its tags, an approval, a promotion, and a move of another version that must not show."""
    import json

    import mlflow

    from mlcycle.cli.app import app
    from mlcycle.registry import audit

    client, log, cfg = world
    gates = {"kind": "gates", "passed": True, "state": "pass", "checks": [
        {"name": "roc_auc_vs_champion", "value": 0.91, "bound": [0.85, 1.0], "comparison": ">=", "passed": True,
         "detail": "n=4000", "evidence": {"ci_low": 0.89, "ci_high": 0.93}, "measurable": True, "policy": None},
        {"name": "calibration", "value": None, "bound": 0.05, "comparison": "<=", "passed": True, "detail": "",
         "evidence": {}, "measurable": False, "policy": "warn"},
    ]}  # fmt: skip
    mlflow.set_tracking_uri(cfg.tracking_uri)
    with mlflow.start_run() as run:
        mlflow.set_tag("mlcycle.git_commit", "abc123")
        mlflow.log_dict(gates, audit.GATES_ARTIFACT)
    v1 = register(client, log, tmp_path, TRAINER.name, registry.CHAMPION)
    (tmp_path / "artifact").mkdir(exist_ok=True)
    v2 = str(client.create_model_version(NAME, source=str(tmp_path / "artifact"), run_id=run.info.run_id).version)
    for key, value in {"mlcycle.run_id": run.info.run_id, "mlcycle.data_hash": "d4t4"}.items():
        client.set_model_version_tag(NAME, v2, key, value)
    gov.mark_registered(client, NAME, v2, TRAINER.name, "event:drift")
    registry.move_alias(client, log, NAME, registry.CHALLENGER, v2, "gates passed", TRAINER.name)
    steps = [{"percent": 0, "state": "pass", "checks": ["PASS  error_rate: 0 <= 0.01"]}]
    client.set_model_version_tag(NAME, v2, audit.CANARY_TAG, json.dumps(steps))
    gov.decide(client, log, GovernanceSpec(), NAME, v2, ALICE, True, "evidence read")
    gov.promote(client, log, GovernanceSpec(), NAME, v2, "canary passed", TRAINER, True, on_behalf_of_approval=True)

    record = audit.version_audit(client, log, NAME, v2)
    assert (record.trained_by, record.triggered_by, record.data_hash, record.git_commit) == (
        TRAINER.name, "event:drift", "d4t4", "abc123")  # fmt: skip
    assert [(g["name"], g["status"]) for g in record.gates] == [("roc_auc_vs_champion", "pass"),
                                                                 ("calibration", "not_measurable")]  # fmt: skip
    assert record.approval.by == "alice" and record.approval.valid and record.authenticated is True
    assert record.canary == steps and record.aliases == ["champion"]
    # The log rows that name v2, in order: challenger set, approval, champion moved (v1 → v2) and the
    # challenger alias cleared by the promotion; the champion's first move (to v1) does not name v2.
    assert [(e["alias"], e["action"], e["from_version"], e["to_version"]) for e in record.events] == [
        ("challenger", "move", None, v2), ("approval", "approved", None, v2), ("champion", "move", v1, v2),
        ("challenger", "move", v2, None),
    ]  # fmt: skip
    assert record.chain["ok"]

    config = tmp_path / "mlcycle.yaml"
    config.write_text(f"model: {{name: {NAME}}}\n")
    out = CliRunner().invoke(app, ["audit", v2, "--json", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["approval"]["by"] == "alice"
    out = CliRunner().invoke(app, ["audit", "99", "--config", str(config)])
    assert out.exit_code == 1 and "no version 99" in out.output
