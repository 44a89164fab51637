"""mlcycle's generic Prefect flows, shipped inside the package so an installed mlcycle runs them.

One module per flow: :mod:`~mlcycle.flows.training` (``train``), :mod:`~mlcycle.flows.monitoring`
(``monitor``), :mod:`~mlcycle.flows.retraining` (``retrain``), :mod:`~mlcycle.flows.rollout`
(``rollout_flow``), :mod:`~mlcycle.flows.batch_score` (``batch_score``), :mod:`~mlcycle.flows.retention`
(``retention``) and :mod:`~mlcycle.flows.backup` (``backup``, which stands in the ops layer: it runs
``mlcycle backup``'s code). A project may keep its
own ``flows/<module>.py`` (the reference project's are thin entrypoints over these; an older
``mlcycle init`` copied them); :func:`load_flow` prefers that file and falls back to this package.

This ``__init__`` imports neither Prefect nor the stack: finding a flow must stay cheap, and the
layer rule (docs/architecture.md) puts these modules above monitoring and below ops and the CLI.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

PACKAGE = __name__
PROJECT_FLOWS_DIR = "flows"
# module → the flow function in it (the deployments' entrypoints, the names the CLI runs).
FLOWS: dict[str, str] = {
    "training": "train",
    "monitoring": "monitor",
    "retraining": "retrain",
    "rollout": "rollout_flow",
    "batch_score": "batch_score",
    "retention": "retention",
    "backup": "backup",
}


def module_name(module: str) -> str:
    """The dotted name of a generic flow's module (``training`` → ``mlcycle.flows.training``)."""
    if module not in FLOWS:
        raise ValueError(f"no generic flow module {module!r}; mlcycle's are {', '.join(FLOWS)}")
    return f"{PACKAGE}.{module}"


def package_dir() -> Path:
    """This package's directory, wherever mlcycle is installed (a wheel's site-packages or a checkout's src/)."""
    return Path(__file__).resolve().parent


def load_flow(root: Path, module: str, name: str) -> Any:
    """The Prefect flow ``name`` of ``module``: the project's own ``flows/<module>.py`` if it has
    one (loaded by path, as ``prefect deploy`` does with a file entrypoint), else mlcycle's, imported
    from this package — so a project without a copy runs the flows of the installed mlcycle."""
    path = Path(root) / PROJECT_FLOWS_DIR / f"{module}.py"
    if path.is_file():
        spec = importlib.util.spec_from_file_location(f"mlcycle_project_flows_{module}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
    else:
        loaded = importlib.import_module(module_name(module))
    return getattr(loaded, name)
