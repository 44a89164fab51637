"""The `mlcycle` command line (thin: every command calls a stage package; the app is in ``app``)."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """The console script: the typer app with one error made readable. A dependency missing from
    the environment (a wheel installed with ``--no-deps``, a package removed since) surfaces as a
    ModuleNotFoundError, at start or deep in a lazy import; the person needs its name and the fix."""
    try:
        from mlcycle.cli.app import app

        app()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if not missing or missing == "mlcycle":
            raise
        print(
            f"mlcycle needs the package {missing!r}, which this environment ({sys.prefix}) does not have. "
            "Install mlcycle with its dependencies: `pip install mlcycle-<version>-py3-none-any.whl` "
            "(not --no-deps), or the README's `uv pip install -r requirements.txt <wheel>`.",
            file=sys.stderr,
        )
        sys.exit(3)
