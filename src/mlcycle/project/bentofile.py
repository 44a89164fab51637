"""A project's ``bentofile.yaml``: what of the project a Bento carries and which service it runs.

In the project layer, beside the other generated files, so ``mlcycle init`` writes it with them
(``project.scaffold``) and ``mlcycle build`` (``ops.bento``) builds it; the build itself, the
wheel and the registry check stay in ``ops.bento``.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from mlcycle.project.config import DEFAULT_CONFIG_NAME, ProjectConfig
from mlcycle.project.templates import render

DIST = "mlcycle"
STAGING = "data/bento"  # build inputs, relative to the project root (data/ is generated state)
BENTOFILE = "bentofile.yaml"
PROJECT_SERVICE = "services.service:ScoringService"
GENERIC_SERVICE = "mlcycle.service:ScoringService"


def service_target(project_root: Path) -> str:
    """What ``bentoml serve`` runs for a project: its own ``services/service.py`` if it has one,
    else mlcycle's generic service from the installed package (one service for every project; its
    schema comes from the project's FeatureService), so no source checkout is needed."""
    if (Path(project_root) / "services" / "service.py").exists():
        return PROJECT_SERVICE
    return GENERIC_SERVICE


class BuildError(RuntimeError):
    """A Bento could not be built; the message says why and how to fix it. Nothing was written."""


def project_relative(cfg: ProjectConfig, path: Path, what: str) -> str:
    """``path`` relative to the project root (posix), or ``BuildError``: a Bento carries project files only."""
    try:
        return path.resolve().relative_to(cfg.root.resolve()).as_posix()
    except ValueError:
        raise BuildError(
            f"{what} {path} is outside the project directory {cfg.root}: a Bento carries files of the "
            "project only; move it into the project"
        ) from None


def _module_patterns(cfg: ProjectConfig, ref: str) -> list[str]:
    """The files of the project module a ``module:function`` names: its top-level package, or its
    file (what ``project_object`` imports from the project directory)."""
    top = ref.partition(":")[0].split(".")[0]
    if (cfg.root / top / "__init__.py").is_file() or (cfg.root / top).is_dir():
        return [f"/{top}/**/*.py"]
    return [f"/{top}.py"]


def include_patterns(cfg: ProjectConfig) -> list[str]:
    """What of the project goes into the Bento (gitignore-style patterns, anchored at the project
    root): the config, the Feast repo's definitions and configs, the contract, the modules the
    config names for the contract and transformations, and the project's own service if any."""
    patterns = [f"/{DEFAULT_CONFIG_NAME}"]
    repo = project_relative(cfg, cfg.feature_repo_path, "features.feature_repo")
    patterns += [f"/{repo}/*.py", f"/{repo}/*.yaml"]
    contract = cfg.table.contract
    if contract and contract.endswith((".yaml", ".yml")):
        patterns.append("/" + project_relative(cfg, cfg.resolve(Path(contract)), "table.contract"))
    for ref in (contract if contract and ":" in contract else None, cfg.table.transformations):
        if ref:
            patterns += [p for p in _module_patterns(cfg, ref) if p not in patterns]
    if service_target(cfg.root) != GENERIC_SERVICE:
        patterns.append("/services/*.py")
    return patterns


def bento_name(cfg: ProjectConfig) -> str:
    """The project's name as a Bento name (lower case letters, digits, ``_``, ``-``, ``.``)."""
    return bento_name_of(cfg.project)


def bento_name_of(project: str) -> str:
    name = re.sub(r"[^a-z0-9_.-]+", "-", project.lower()).strip("-._")
    return name or "mlcycle"


def wheel_filename(version: str) -> str:
    return f"{DIST}-{version}-py3-none-any.whl"


def bentofile_yaml(cfg: ProjectConfig, wheel: str | None = None) -> str:
    """The project's ``bentofile.yaml`` (``mlcycle/templates/bentofile.yaml.j2``): what
    ``mlcycle init`` writes and ``mlcycle build`` builds when the project has none of its own.
    ``wheel``: the mlcycle wheel's file name under ``data/bento/`` (default: this version's)."""
    return render(
        "bentofile.yaml.j2",
        bento_name=bento_name(cfg),
        project=cfg.project,
        service=service_target(cfg.root),
        include=include_patterns(cfg),
        staging=STAGING,
        wheel=wheel or wheel_filename(importlib.metadata.version(DIST)),
    )
