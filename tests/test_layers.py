"""The house's layers (docs/architecture.md, "Layers"): each package of ``src/mlcycle`` imports only
packages below it, and no module imports itself back through others.

Read from the source with ``ast``, not from ``sys.modules`` after an import: a lazy import (inside a
function, done only when that function runs) is as much a dependency as one at the top of a file,
and a layer rule that only saw module-level imports would let the cycles back in one function at a
time. Nothing is imported to check, so the test is fast and needs no optional extra.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "mlcycle"

# Bottom → top. A module may import its own layer and the layers below it, never one above. The
# first layer holds the leaves: modules every stage shares and that import nothing of mlcycle.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mlcycle", "mlcycle.decisions", "mlcycle.stats", "mlcycle.settings", "mlcycle.net", "mlcycle.flavors"),
    ("mlcycle.project", "mlcycle.storage"),
    ("mlcycle.data",),
    ("mlcycle.features",),
    ("mlcycle.training",),
    ("mlcycle.registry",),
    ("mlcycle.serving",),
    ("mlcycle.streaming",),
    ("mlcycle.monitoring",),
    ("mlcycle.flows",),
    # mlcycle.flows.backup, the scheduled backup flow, runs ops.backup's code: it stands with ops, above
    # the rest of mlcycle.flows (nothing imports it; load_flow finds it by name).
    ("mlcycle.ops", "mlcycle.service", "mlcycle.flows.backup"),
    ("mlcycle.cli",),
)
# Imports against the order that stay for now, each with its reason (importer, imported module).
# Kept short on purpose, and checked both ways: an entry no longer needed fails the test too.
EXCEPTIONS: Mapping[tuple[str, str], str] = {}


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _owner(name: str, known: Iterable[str]) -> str | None:
    """The longest known module ``name`` is, or is inside (``a.b.c`` for ``from a.b import c``)."""
    known = set(known)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(name: str, path: Path, known: Iterable[str]) -> list[tuple[str, int]]:
    """(imported mlcycle module, line) for every import statement in the file — at module level,
    under ``if TYPE_CHECKING``, or inside a function — with relative imports resolved."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            # ``from a import b``: b is a submodule or a name in a; either way ``a.b`` finds its owner.
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target == ROOT or target.startswith(ROOT + "."):
                owner = _owner(target, known)
                if owner is not None:
                    found.append((owner, node.lineno))
    return found


def graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """Module → {imported module: first line}, every import included."""
    mods = modules(src)
    out: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges: dict[str, int] = {}
        for target, line in imports(name, path, mods):
            if target != name:
                edges.setdefault(target, line)
        out[name] = edges
    return out


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for index, names in enumerate(LAYERS):
        for prefix in names:
            inside = module == prefix or (prefix != ROOT and module.startswith(prefix + "."))
            if inside and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def upward(edges: Mapping[str, Mapping[str, int]]) -> dict[tuple[str, str], str]:
    """Imports of a higher layer, each with where it is written."""
    found = {}
    for module, targets in edges.items():
        for target, line in targets.items():
            here, there = layer_of(module), layer_of(target)
            if here is not None and there is not None and there > here:
                found[(module, target)] = f"{module} (line {line}) imports {target}: layer {there} above {here}"
    return found


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    successors = {node: sorted(targets) for node, targets in edges.items()}
    for start in sorted(successors):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            children = successors.get(node, [])
            if position < len(children):
                work.append((node, position + 1))
                child = children[position]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_every_module_has_a_layer() -> None:
    """A new package must be placed in the order (and in the docs) before it can be imported."""
    placeless = [name for name in modules() if layer_of(name) is None]
    assert not placeless, f"modules in no layer (add them to LAYERS and docs/architecture.md): {placeless}"


def test_the_leaves_import_nothing_of_mlcycle() -> None:
    """decisions, stats, settings, net and flavors are what everything shares: they depend on nothing
    of ours, so any stage can use them without pulling another stage in."""
    edges = graph()
    leaves = [name for name in LAYERS[0] if name != ROOT]
    found = {leaf: sorted(set(edges.get(leaf, {})) - {ROOT}) for leaf in leaves}
    assert all(leaf in edges for leaf in leaves), [leaf for leaf in leaves if leaf not in edges]
    assert not any(found.values()), found


def test_stage_packages_keep_to_their_layer() -> None:
    found = upward(graph())
    broken = [text for key, text in sorted(found.items()) if key not in EXCEPTIONS]
    stale = [f"{a} -> {b}" for a, b in EXCEPTIONS if (a, b) not in found]
    assert not broken, "imports against the layer order (docs/architecture.md):\n" + "\n".join(broken)
    assert not stale, f"exceptions no longer needed, remove them from EXCEPTIONS: {stale}"


def test_no_import_cycle_lazy_imports_included() -> None:
    edges = graph()
    found = cycles({module: set(targets) for module, targets in edges.items()})
    assert not found, "import cycles (lazy imports included):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_scan_sees_lazy_relative_and_aliased_imports(tmp_path: Path) -> None:
    """The oracle of the tests above, on a hand-made package: a scan that missed an import kind
    would pass any library."""
    pkg = tmp_path / ROOT
    for sub in ("project", "serving", "streaming"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "project" / "config.py").write_text(
        "def f():\n    from mlcycle.serving import scorer\n"  # lazy, from-package-import-submodule
    )
    (pkg / "serving" / "scorer.py").write_text("from ..streaming.consumer import x\n")  # relative
    (pkg / "streaming" / "consumer.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mlcycle.serving.scorer as s\nx = 1\n"
    )
    edges = graph(tmp_path)
    assert edges["mlcycle.project.config"] == {"mlcycle.serving.scorer": 2}
    assert edges["mlcycle.serving.scorer"] == {"mlcycle.streaming.consumer": 1}
    assert edges["mlcycle.streaming.consumer"] == {"mlcycle.serving.scorer": 3}
    assert set(upward(edges)) == {
        ("mlcycle.project.config", "mlcycle.serving.scorer"),
        ("mlcycle.serving.scorer", "mlcycle.streaming.consumer"),
    }
    assert cycles({m: set(t) for m, t in edges.items()}) == [["mlcycle.serving.scorer", "mlcycle.streaming.consumer"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
