"""mlcycle's generic Prefect flows live in the package (``mlcycle.flows``), so an installed mlcycle
runs them: ``mlcycle train`` of a project without its own ``flows/`` must resolve to a module inside
the installed ``mlcycle``, never to a ``flows/`` directory found by counting parents from a checkout
(an installed wheel has none: "…/lib/python3.11/flows/training.py not found", issue 23)."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mlcycle
import mlcycle.flows
from mlcycle.flows import FLOWS, load_flow

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "mlcycle"
PACKAGE = Path(mlcycle.__file__).resolve().parent


def test_every_generic_flow_is_a_module_of_the_package() -> None:
    for module in FLOWS:
        assert (PACKAGE / "flows" / f"{module}.py").is_file(), module
    assert mlcycle.flows.package_dir() == PACKAGE / "flows"


@pytest.mark.parametrize(("module", "name"), list(FLOWS.items()))
def test_a_project_without_flows_runs_the_packages(tmp_path: Path, module: str, name: str) -> None:
    """What ``mlcycle train`` (and monitor, retrain, rollout, batch-score) loads for a project made
    by ``init``: the flow defined in the installed package, not in the repository's top level."""
    flow = load_flow(tmp_path, module, name)
    defined_in = Path(inspect.getfile(flow.fn)).resolve()
    assert defined_in == PACKAGE / "flows" / f"{module}.py"
    assert REPO / "flows" not in defined_in.parents
    assert flow.fn.__module__ == f"mlcycle.flows.{module}"


def test_the_resolution_needs_no_checkout(tmp_path: Path) -> None:
    """From a directory outside the repository, with the repository off ``sys.path`` (as with the
    wheel installed), the training flow still resolves inside the ``mlcycle`` package."""
    code = (
        "import inspect, pathlib, sys; import mlcycle; from mlcycle.flows import load_flow; "
        "f = load_flow(pathlib.Path.cwd(), 'training', 'train'); "
        "print(pathlib.Path(inspect.getfile(f.fn)).resolve()); print(pathlib.Path(mlcycle.__file__).resolve().parent)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    defined_in, package = (Path(line) for line in out.stdout.split())
    assert defined_in == package / "flows" / "training.py"


def test_a_projects_own_flow_file_comes_first(tmp_path: Path) -> None:
    """A project may keep its own ``flows/<module>.py`` (older inits copied them): it is what runs."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "training.py").write_text("def train():\n    return 'own'\n")
    assert load_flow(tmp_path, "training", "train")() == "own"


def test_an_unknown_flow_module_is_named() -> None:
    with pytest.raises(ValueError, match="no generic flow module 'trainig'"):
        load_flow(Path("/nonexistent"), "trainig", "train")


def test_the_reference_projects_flows_are_thin_entrypoints_over_the_package() -> None:
    """``flows/*.py`` at the top level re-export the package's flows (same objects: prefect.yaml's
    ``flows/xxx.py:fn`` and ``flows.xxx.<name>`` keep working) and define nothing themselves."""
    import importlib

    for module, name in FLOWS.items():
        path = REPO / "flows" / f"{module}.py"
        tree = ast.parse(path.read_text())
        defined = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)]
        assert not defined, f"{path} defines {[n.name for n in defined]}: that belongs in mlcycle.flows.{module}"
        thin = importlib.import_module(f"flows.{module}")
        package = importlib.import_module(f"mlcycle.flows.{module}")
        assert getattr(thin, name) is getattr(package, name)
        assert load_flow(REPO, module, name) is getattr(package, name)


# parents[N] from a module of src/ is a path in a source checkout, which an installed wheel does not
# have: flows and the scoring service are found as modules of the package.


def test_nothing_in_src_is_found_by_counting_parents() -> None:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        hits = [line for line in path.read_text().splitlines() if re.search(r"parents\[\d+\]", line)]
        if hits:
            found[path.relative_to(SRC).as_posix()] = hits
    assert not found, found
