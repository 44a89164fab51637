"""Project files rendered from template files shipped in the package (``mlcycle/templates/``).

Generated files come from real files a reader can open, not from string pieces in Python, and every
variable must be given: ``StrictUndefined`` turns a forgotten one into an error naming it, before
anything is written.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, TemplateNotFound, UndefinedError


class TemplateError(ValueError):
    """A project template could not be rendered: missing from the package, or a variable not given."""


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("mlcycle", "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # these are YAML, Python and Markdown files, not HTML
    )


def render(name: str, **context: Any) -> str:
    """The text of template ``name`` (a path under ``mlcycle/templates/``) with ``context`` filled in."""
    try:
        template = _environment().get_template(name)
    except TemplateNotFound as exc:
        raise TemplateError(
            f"template {name!r} is not in the installed mlcycle package (mlcycle/templates/): "
            "reinstall mlcycle (pip install --force-reinstall mlcycle)"
        ) from exc
    try:
        return template.render(**context)
    except UndefinedError as exc:
        raise TemplateError(f"template {name!r}: {exc.message}; pass it to render()") from exc
