"""Per-principal admin tokens (mlcycle.serving.tokens) and the service's check of them: who a token
belongs to, a revoked or unknown token refused, the principal's role enforced with the rule named.
The service's check is called in this process on the class `bentoml serve` imports; the live
service's answers are in tests/test_serving.py."""

from __future__ import annotations

import hashlib
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from mlcycle.cli.app import app
from mlcycle.project.config import ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.serving import tokens

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_token_is_shown_once_and_only_its_digest_is_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(tokens.ENV_SHARED, raising=False)
    path = tmp_path / "secrets" / "admin_tokens"
    alice = tokens.issue(path, "alice")
    bob = tokens.issue(path, "bob")
    text = path.read_text()
    assert alice not in text and bob not in text
    assert f"alice sha256:{hashlib.sha256(alice.encode()).hexdigest()}" in text  # the digest, by hashlib
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tokens.principal_for(alice, path), tokens.principal_for(bob, path)) == ("alice", "bob")
    assert tokens.principal_for("guess", path) is None and tokens.principal_for("", path) is None
    renewed = tokens.issue(path, "alice")  # a new token replaces the old one
    assert tokens.principal_for(alice, path) is None and tokens.principal_for(renewed, path) == "alice"
    tokens.revoke(path, "alice")
    assert tokens.principal_for(renewed, path) is None and tokens.principal_for(bob, path) == "bob"
    with pytest.raises(tokens.TokenError, match="holds no admin token"):
        tokens.revoke(path, "alice")
    with pytest.raises(tokens.TokenError, match="not a principal name"):
        tokens.issue(path, "two words")
    monkeypatch.setenv(tokens.ENV_SHARED, "shared-secret")
    assert tokens.principal_for("shared-secret", path) == tokens.SHARED_PRINCIPAL


def test_the_token_commands(tmp_path: Path) -> None:
    config = tmp_path / "mlcycle.yaml"
    config.write_text("model: {name: m}\n")
    runner = CliRunner()
    issued = runner.invoke(app, ["token", "issue", "ops-alice", "--config", str(config)])
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip().splitlines()[0]
    path = tmp_path / "data" / "secrets" / "admin_tokens"
    assert tokens.principal_for(token, path) == "ops-alice"
    listed = runner.invoke(app, ["token", "list", "--config", str(config)])
    assert "ops-alice" in listed.output and token not in listed.output
    assert runner.invoke(app, ["token", "revoke", "ops-alice", "--config", str(config)]).exit_code == 0
    assert runner.invoke(app, ["token", "revoke", "ops-alice", "--config", str(config)]).exit_code == 1


@pytest.fixture(scope="module")
def service_class():
    """The service class as `bentoml serve` imports it (the repo's own project)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLCYCLE_CONFIG", raising=False)
        patch.chdir(REPO_ROOT)
        sys.path.insert(0, str(REPO_ROOT))
        try:
            from services import service
        finally:
            sys.path.remove(str(REPO_ROOT))
    import mlcycle.service as module  # where the service's errors are defined

    assert service.ScoringService is module.ScoringService
    return module.ScoringService.inner, module


def test_the_admin_check_names_the_principal_and_enforces_its_role(service_class, tmp_path, monkeypatch) -> None:
    inner, module = service_class
    monkeypatch.delenv(tokens.ENV_SHARED, raising=False)
    monkeypatch.setenv(tokens.ENV_FILE, str(tmp_path / "tokens"))
    cfg = ProjectConfig.model_validate(
        {"model": {"name": "m"}, "governance": {"roles": {"operator": ["ops-alice"], "trainer": ["bob"]}}}
    )
    cfg.root = tmp_path
    me = SimpleNamespace(cfg=cfg)

    def check(token: str | None) -> tuple[str, str | None, int | None]:
        headers = {} if token is None else {"x-admin-token": token}
        ctx = SimpleNamespace(request=SimpleNamespace(headers=headers), response=SimpleNamespace(status_code=None))
        who, refused = inner._admin(me, ctx, "operator", "roll back")
        return who, refused, ctx.response.status_code

    with pytest.raises(module.Unauthorized, match="admin endpoints are off"):
        check("anything")
    alice, bob = tokens.issue(tmp_path / "tokens", "ops-alice"), tokens.issue(tmp_path / "tokens", "bob")
    assert check(alice) == ("ops-alice (service token)", None, None)
    _, refused, status = check(bob)
    assert status == 403 and refused.startswith("refused (role): bob may not roll back: that needs the operator role")
    row = registry.PromotionLog(cfg.promotion_log_uri).history("m")[0]
    assert (row.action, row.actor) == ("refused", "bob")  # the refusal is on the record
    for wrong in (None, "", "not-a-token"):
        with pytest.raises(module.Unauthorized, match="missing, wrong or revoked"):
            check(wrong)
    tokens.revoke(tmp_path / "tokens", "ops-alice")  # read again on every call: no restart needed
    with pytest.raises(module.Unauthorized, match="revoked"):
        check(alice)
