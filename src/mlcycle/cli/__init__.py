"""The `mlcycle` command line (thin: every command calls a stage package)."""

from mlcycle.cli.app import app

__all__ = ["app"]
