"""Copies of a project: the same config and feature repo in another directory, other data sizes.

Tests and benchmarks run against such a copy so they exercise the real ``feature_repo/`` and
config while keeping their state (data, registry, online store) away from the working project.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from mlcycle.project.config import DEFAULT_CONFIG_NAME, ProjectConfig, load_config


def copy_project(source: Path, dest: Path, data: dict | None = None) -> ProjectConfig:
    """A runnable project at ``dest`` from the one at ``source``; ``data`` overrides the data spec."""
    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((source / DEFAULT_CONFIG_NAME).read_text()) or {}
    repo = Path(raw.get("features", {}).get("feature_repo", "feature_repo"))
    shutil.copytree(source / repo, dest / repo, ignore=shutil.ignore_patterns("__pycache__"))
    for code in ("flows", "services", *project_modules(raw)):
        if (source / code).is_dir():
            shutil.copytree(source / code, dest / code, ignore=shutil.ignore_patterns("__pycache__"))
        elif (source / f"{code}.py").is_file():
            shutil.copy2(source / f"{code}.py", dest / f"{code}.py")
    contract = (raw.get("table") or {}).get("contract")
    if contract and contract.endswith((".yaml", ".yml")) and (source / contract).is_file():
        (dest / contract).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / contract, dest / contract)
    raw["data"] = {**raw.get("data", {}), **(data or {})}
    (dest / DEFAULT_CONFIG_NAME).write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(dest / DEFAULT_CONFIG_NAME)


def project_modules(raw: dict) -> list[str]:
    """Top-level modules of the project's own code that its config names (``module:function``)."""
    table = raw.get("table") or {}
    refs = [raw.get("generator"), raw.get("demo"), table.get("transformations"), table.get("contract")]
    return sorted({ref.split(":")[0].split(".")[0] for ref in refs if isinstance(ref, str) and ":" in ref})
