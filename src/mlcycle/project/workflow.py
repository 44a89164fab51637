"""The project's CI/CD workflow for GitHub Actions (``.github/workflows/mlcycle.yml``), rendered from
the package template ``github-workflow.yml.j2``: ``mlcycle init`` writes it into a new project and
``mlcycle ci workflow`` into an existing one. Every ``mlcycle`` command it runs is a real command of
the CLI (a test parses each against it) and the file passes ``actionlint`` (a test runs it)."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlcycle.project.templates import render

WORKFLOW_FILE = Path(".github/workflows/mlcycle.yml")
WORKFLOW_TEMPLATE = "github-workflow.yml.j2"


def _package() -> str:
    try:
        return f"mlcycle=={version('mlcycle')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "mlcycle"


def workflow_yaml(project: str, generator: bool) -> str:
    """The workflow's text for ``project``; ``generator``: the project writes its own example data
    (``mlcycle data generate``), else a repository variable names the command that fetches the table."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return render(WORKFLOW_TEMPLATE, project=project, package=_package(), python_version=python, generator=generator,
                  gh=_expression)  # fmt: skip


def _expression(text: str) -> str:
    """A GitHub Actions expression, ``${{ text }}``: written by a function, as Jinja reads ``{{`` itself."""
    return "${{ " + text + " }}"
