"""Project files rendered from template files shipped in the package (``mlcycle/templates/``).

Generated files come from real files a reader can open, not from string pieces in Python, and every
variable must be given: ``StrictUndefined`` turns a forgotten one into an error naming it, before
anything is written.

The filters write values in the syntax of the file they land in, so a template never quotes by
hand: ``yaml`` (one YAML scalar or flow collection: ``yes`` comes out as ``'yes'``, text, not a
boolean), ``py`` (a Python literal in the house style, one item a line when long), ``py_names`` (a
Python list of expressions, e.g. variable names) and ``comment`` (a paragraph as ``#`` lines wrapped
at 100 columns, for comments that carry values of unknown length). ``{{ align }}`` before a trailing
``#`` comment lines it up at column :data:`COMMENT_COLUMN`, whatever the length of the value before it.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined, TemplateNotFound, UndefinedError

WIDTH = 100  # generated lines stay within this, where the values allow
COMMENT_COLUMN = 32  # where ``{{ align }}`` puts the ``#`` of a trailing comment (1-based)
# What ``{{ align }}`` renders to before the comments are aligned: a character no filter writes (YAML
# and JSON escape it), so a value can never be taken for it.
_ALIGN = "\x00"


class TemplateError(ValueError):
    """A project template could not be rendered: missing from the package, or a variable not given.
    ``message`` says which and ``fix`` what to do, so a caller can pass both on in its own error."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(f"{message}; {fix}")
        self.message = message
        self.fix = fix


def yaml_value(value: Any) -> str:
    """One YAML scalar or flow collection, quoted exactly where YAML needs it."""
    if isinstance(value, np.generic):
        value = value.item()  # a NumPy scalar (a column's value): its Python value
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def py_literal(value: Any, indent: int = 4) -> str:
    """A Python literal of strings, lists and dicts in the house style (double quotes), exploded one
    item a line (with the trailing comma ruff keeps) when it would not fit at ``indent``."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are Python's too
    if isinstance(value, dict):
        items = [f"{py_literal(k)}: {py_literal(v, indent + 4)}" for k, v in value.items()]
        open_, close = "{", "}"
    else:
        items = [py_literal(v, indent + 4) for v in value]
        open_, close = "[", "]"
    return _bracketed(items, open_, close, indent, len(open_ + ", ".join(items) + close) + indent <= WIDTH)


def py_names(names: Sequence[str], indent: int = 4) -> str:
    """A Python list of expressions (names, calls), exploded when it would not fit after a keyword."""
    flat = len("[" + ", ".join(names) + "]") + indent + 20 <= WIDTH
    return _bracketed(list(names), "[", "]", indent, flat)


def _bracketed(items: list[str], open_: str, close: str, indent: int, flat: bool) -> str:
    if flat:
        return open_ + ", ".join(items) + close
    pad = " " * (indent + 4)
    return open_ + "\n" + "".join(f"{pad}{item},\n" for item in items) + " " * indent + close


def comment(text: str, indent: int = 0) -> str:
    """``text`` (one paragraph) as ``#`` comment lines indented by ``indent``, wrapped at :data:`WIDTH`."""
    lines = textwrap.wrap(" ".join(text.split()), WIDTH - indent - 2)
    return "".join(" " * indent + "# " + line + "\n" for line in lines)


def _aligned(text: str) -> str:
    """Each ``value{{ align }}# comment`` line with its comment at :data:`COMMENT_COLUMN` (one space
    after the value when the value is longer)."""
    lines = []
    for line in text.split("\n"):
        if _ALIGN in line:
            before, _, after = line.partition(_ALIGN)
            line = f"{before.ljust(COMMENT_COLUMN - 2)} {after}"
        lines.append(line)
    return "\n".join(lines)


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("mlcycle", "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # these are YAML, Python and Markdown files, not HTML
    )
    env.filters.update(yaml=yaml_value, py=py_literal, py_names=py_names, comment=comment)
    env.globals["align"] = _ALIGN
    return env


def render(name: str, **context: Any) -> str:
    """The text of template ``name`` (a path under ``mlcycle/templates/``) with ``context`` filled in."""
    try:
        template = _environment().get_template(name)
    except TemplateNotFound as exc:
        raise TemplateError(
            f"template {name!r} is not in the installed mlcycle package (mlcycle/templates/)",
            "reinstall mlcycle (pip install --force-reinstall mlcycle)",
        ) from exc
    try:
        return _aligned(template.render(**context))
    except UndefinedError as exc:
        # A template asks for a value its caller does not give: the caller's bug, named for its author.
        raise TemplateError(f"template {name!r}: {exc.message}", "pass it to render()") from exc
