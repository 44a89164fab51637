"""Project files rendered from the template files shipped in the package (``mlcycle/templates/``).

The reference project's ``feature_repo/feature_store*.yaml`` and ``prefect.yaml`` are renderings of
the templates ``mlcycle init`` uses, held equal byte for byte (hand copies drift: every generated
mlcycle.yaml once named ``mlcycle.config``, gone since). A variable a template needs and is not given
is an error naming it, and ``init`` then writes nothing. Every ``mlcycle.*`` module (and
``mlcycle/*.py`` file) a generated file names exists in the installed package.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from tests.test_init import ROLES, make_table

from mlcycle.monitoring.retraining import DECAY_EVENT, DRIFT_EVENT
from mlcycle.project import scaffold
from mlcycle.project.config import load_config
from mlcycle.project.scaffold import InitError, InitResult, init_project, reference_files
from mlcycle.project.templates import TemplateError, py_literal, render, yaml_value

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src"
REGENERATE = (
    f'cd {REPO_ROOT} && .venv/bin/python -c "from mlcycle.project.scaffold import write_reference_files; '
    'write_reference_files()"'
)
# Dotted words in generated files that are not Python: the config's file name, the events the monitor
# emits, and the resource they are about (``mlcycle.model.<model.name>``, see mlcycle.flows.monitoring).
NOT_MODULES = {scaffold.CONFIG_NAME, DRIFT_EVENT, DECAY_EVENT}
RESOURCE_PREFIX = "mlcycle.model."
DOTTED = re.compile(r"\bmlcycle(?:\.[A-Za-z_]\w*)+")
SLASHED = re.compile(r"\bmlcycle/[\w/]+\.py\b")


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> list[InitResult]:
    """Two init projects between them taking every branch of the templates: entities, a protected
    attribute and a label arrival column (classification); no entity, no event id (regression)."""
    import numpy as np

    tmp = tmp_path_factory.mktemp("templates")
    table = make_table(1_500)
    table["region"] = np.where(np.arange(len(table)) % 3 == 0, "north", "south")
    table["label_at"] = table["ts"] + np.timedelta64(2, "D")
    path = tmp / "orders.parquet"
    table.to_parquet(path, index=False)
    flat = tmp / "baskets.parquet"
    table.drop(columns=["order_id", "churned", "region", "label_at"]).to_parquet(flat, index=False)
    return [
        init_project(tmp / "full", path, **ROLES, entities=["customer_id"], protected="region",
                     label_available_at="label_at"),
        init_project(tmp / "flat", flat, "ts", "basket_value", task="regression", label_delay="2d"),
    ]  # fmt: skip


def _rendered(projects: list[InitResult]) -> dict[str, str]:
    """Every text file the templates made: the projects' and the reference project's."""
    texts = {
        f"{r.project}/{p.relative_to(r.directory)}": p.read_text()
        for r in projects
        for p in r.written
        if p.suffix in {".yaml", ".py", ".md"} and p.name != scaffold.CONTRACT_NAME
    }
    texts.update({f"reference/{p.relative_to(REPO_ROOT)}": t for p, t in reference_files(REPO_ROOT).items()})
    return texts


def _missing(text: str) -> list[str]:
    """The ``mlcycle.*`` modules or attributes, and ``mlcycle/*.py`` files, named in ``text`` that the
    installed package does not have."""
    missing = []
    for name in sorted(set(DOTTED.findall(text))):
        if name in NOT_MODULES or f"{name}.".startswith(RESOURCE_PREFIX):
            continue
        parts = name.split(".")
        # The longest prefix that is a module; the rest must be attributes of it.
        for i in range(len(parts), 0, -1):
            module = ".".join(parts[:i])
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if found:
                obj = importlib.import_module(module)
                for attr in parts[i:]:
                    obj = getattr(obj, attr, None)
                if obj is None:
                    missing.append(name)
                break
        else:
            missing.append(name)
    missing += [path for path in SLASHED.findall(text) if not (SRC / path).is_file()]
    return missing


# ------------------------------------------------------------------------------------------ reference


def test_the_reference_project_files_are_the_templates_rendering() -> None:
    """The committed files, byte for byte, as init's templates render them for the reference project."""
    files = reference_files(REPO_ROOT)
    assert {p.relative_to(REPO_ROOT).as_posix() for p in files} == {
        "feature_repo/feature_store.yaml", "feature_repo/feature_store.scale.yaml", "prefect.yaml",
    }  # fmt: skip
    for path, text in files.items():
        assert path.read_bytes() == text.encode(), (
            f"{path.relative_to(REPO_ROOT)} differs from its template's rendering (src/mlcycle/templates/): "
            f"change the template, not the file, then regenerate the files with\n  {REGENERATE}"
        )


def test_the_reference_files_keep_what_the_project_runs_on() -> None:
    """What the rendering must keep for the reference project: its own flow files as entrypoints, its
    deployment names (the demo and the docs name them), no parameters, any model's events."""
    doc = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    names = {d["name"]: d["entrypoint"] for d in doc["deployments"]}
    assert names == {
        "train": "flows/training.py:train", "monitor": "flows/monitoring.py:monitor",
        "retrain": "flows/retraining.py:retrain", "rollout": "flows/rollout.py:rollout_flow",
        "batch-score": "flows/batch_score.py:batch_score", "retention": "flows/retention.py:retention",
        "backup": "flows/backup.py:backup",
    }  # fmt: skip
    assert all((REPO_ROOT / e.partition(":")[0]).is_file() for e in names.values())
    assert all(d["parameters"] == {} for d in doc["deployments"])
    (trigger,) = next(d for d in doc["deployments"] if d["name"] == "retrain")["triggers"]
    assert trigger["match"] == {"prefect.resource.id": "mlcycle.model.*"}
    assert set(trigger["parameters"]) == {"trigger", "summary_path"}
    project = yaml.safe_load((REPO_ROOT / scaffold.CONFIG_NAME).read_text())["project"]
    for name in ("feature_store.yaml", "feature_store.scale.yaml"):
        store = yaml.safe_load((REPO_ROOT / "feature_repo" / name).read_text())
        assert store["project"].startswith(f"mlcycle_{project}")


# ------------------------------------------------------------------------------------------ strict


def test_a_variable_not_given_is_an_error_naming_it() -> None:
    with pytest.raises(TemplateError) as caught:
        render(scaffold.FEATURE_STORE_TEMPLATE, scale=True)
    assert "'project' is undefined" in str(caught.value) and caught.value.fix
    with pytest.raises(TemplateError) as caught:
        render("no_such_file.j2")
    assert "no_such_file.j2" in str(caught.value) and "reinstall mlcycle" in caught.value.fix


def _failing_readme(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README, the last template init renders, rendered without one of its variables."""
    real = scaffold.render

    def render_without_notes(name: str, **context):
        if name == scaffold.README_TEMPLATE:
            context.pop("notes")
        return real(name, **context)

    monkeypatch.setattr(scaffold, "render", render_without_notes)


def test_a_template_that_fails_to_render_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "orders.parquet"
    make_table(600).to_parquet(path, index=False)
    _failing_readme(monkeypatch)
    target = tmp_path / "new" / "project"
    with pytest.raises(InitError) as caught:
        init_project(target, path, **ROLES)
    assert "'notes' is undefined" in str(caught.value) and caught.value.fix
    assert not (tmp_path / "new").exists(), "the target and the parents init created are gone"
    # Into a directory that holds files (--force): they are left as they were, nothing added.
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mlcycle.yaml").write_text("mine")
    with pytest.raises(InitError):
        init_project(busy, path, **ROLES, force=True)
    assert [p.name for p in busy.iterdir()] == ["mlcycle.yaml"] and (busy / "mlcycle.yaml").read_text() == "mine"
    assert not list(tmp_path.glob(".*.init-*")), "a temporary directory was left behind"


# ------------------------------------------------------------------------------------------ contents


def test_every_mlcycle_module_a_generated_file_names_exists(projects: list[InitResult]) -> None:
    texts = _rendered(projects)
    named = {n for t in texts.values() for n in DOTTED.findall(t)}
    assert {"mlcycle.project.config.ProjectConfig", "mlcycle.flows.training.train"} <= named  # the check sees them
    missing = {f: m for f, text in texts.items() if (m := _missing(text))}
    assert not missing, missing


def test_the_module_check_catches_names_that_moved() -> None:
    """The oracle of the test above: the names generated files carried before they moved."""
    assert _missing("mlcycle.config.ProjectConfig; (mlcycle/scale.py); mlcycle.flows.training.nope") == [
        "mlcycle.config.ProjectConfig", "mlcycle.flows.training.nope", "mlcycle/scale.py",
    ]  # fmt: skip
    assert _missing("mlcycle.yaml, mlcycle.model.x-model, mlcycle.model.*, mlcycle/settings.py, mlcycle.flows.*") == []


def test_every_rendered_file_parses(projects: list[InitResult]) -> None:
    """YAML loads, Python parses, both profiles' Feast configs name the same offline store; the
    comments ``{{ align }}`` lines up sit where they should and no marker is left."""
    for name, text in _rendered(projects).items():
        assert "\x00" not in text and "{{" not in text.replace("{{ event.", ""), name
        assert text.endswith("\n") and not text.endswith("\n\n"), name
        if name.endswith(".yaml"):
            assert isinstance(yaml.safe_load(text), dict), name
        elif name.endswith(".py"):
            ast.parse(text, name)
    for r in projects:
        load_config(r.config)
        config = r.config.read_text()
        assert "\n  contract: contract.yaml      # inferred from the table" in config  # column 32


def test_filters_write_each_syntax() -> None:
    assert yaml_value("yes") == "'yes'" and yaml_value("a: b") == "'a: b'" and yaml_value(["x", 1]) == "[x, 1]"
    assert py_literal({"a": ["b"]}) == '{"a": ["b"]}'
    long = py_literal({f"column_{i}": f"column_{i}_value" for i in range(6)})
    assert long.startswith("{\n        ") and long.endswith(",\n    }")  # one item a line, ruff's trailing comma


def test_the_cluster_work_pool_runs_the_projects_bento_image_in_profile_scale() -> None:
    """prefect.yaml's second pool: a kubernetes pool on the image `bentoml containerize` names after the
    project's Bento (bentofile.bento_name), in profile scale; the local pool is what deployments use."""
    from mlcycle.project.bentofile import bento_name_of

    doc = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    cluster = doc["definitions"]["cluster_pool"]
    assert cluster["name"] == "mlcycle-kubernetes"
    assert cluster["job_variables"]["image"] == f"{bento_name_of(doc['name'])}:latest" == "fraud:latest"
    assert cluster["job_variables"]["env"] == {"MLCYCLE_PROFILE": "scale"}  # no secret in the file
    assert {d["work_pool"]["name"] for d in doc["deployments"]} == {"mlcycle-local"}
    assert "set_working_directory: {directory: /home/bentoml/bento/src}" in (REPO_ROOT / "prefect.yaml").read_text()
