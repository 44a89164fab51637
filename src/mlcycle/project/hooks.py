"""Project hooks: the ``module:function`` names a project's config gives (its contract, its
transformations, its example-data generator, its demo), imported from the project directory.

Several stages load hooks — data validation (a contract function), features (transformations, the
generator), the CLI (the demo) — so the loader sits with the project config at the bottom of the
layers (docs/architecture.md) instead of in one of those stages, where the others would have to
import it upward.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from mlcycle.project.config import ProjectConfig


class ProjectHookError(ImportError):
    """A ``module:function`` the config names cannot be imported or is not callable."""


def project_object(cfg: ProjectConfig, ref: str) -> Any:
    """``module:function`` from the project directory (put first on ``sys.path``), as a project's
    flows and Feast repo see it. Only names from the config file: never one a request names."""
    module_name, _, attr = ref.partition(":")
    root = str(cfg.root.resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProjectHookError(
            f"cannot import '{module_name}' (named by '{ref}' in the config) from {root}: {exc}"
        ) from None
    value = getattr(module, attr, None)
    if not callable(value):
        raise ProjectHookError(f"'{ref}': module '{module_name}' has no function '{attr}'")
    return value
