"""The serving request schema, derived from the project's FeatureService and its data contract.

A request carries the entity keys of the service's feature views and the fields of its request
sources (Hopsworks derives a deployment's schema the same way). Types come from the Feast
definitions, bounds and nullability from the contract. The definitions are read from the feature
repo's source (``feast.repo_operations.parse_repo``), not the registry: the schema exists even
while the registry is unreachable, and the service then answers 503 naming it, as it should.

Numbers are strict: a JSON boolean or a string is not a number (lax parsing scored ``true`` as 1.0
and ``"120.5"`` as 120.5, hiding a client's bug behind a plausible score), infinities and NaN are
refused, ids fit int64; and a number is not a time. The schema is what the OpenAPI document declares
(``mlcycle.serving.openapi``), so what it accepts is what it says. A category outside the contract's
set is *not* refused: it is scored and named in the answer (``unknown_categories``), because the
world does produce new categories and a refusal would hide them from monitoring.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from mlcycle.project.config import ProjectConfig

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
REQUEST_TIME = "request_unix"  # filled by the service from ``timestamp``; not a request field
TIMESTAMP_FIELD = "timestamp"
INTEGER_TYPES = {"INT32", "INT64", "UNIX_TIMESTAMP"}
FLOAT_TYPES = {"FLOAT", "DOUBLE"}


class SchemaError(RuntimeError):
    """The feature repo does not define what the config names (the FeatureService, a view)."""


@dataclass(frozen=True)
class InputField:
    name: str
    kind: str  # "int", "float", "bool", "str"
    required: bool = True
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    description: str = ""


def _kind(value_type_name: str) -> str:
    if value_type_name in INTEGER_TYPES:
        return "int"
    if value_type_name in FLOAT_TYPES:
        return "float"
    if value_type_name == "BOOL":
        return "bool"
    return "str"


def service_inputs(cfg: ProjectConfig) -> tuple[list[InputField], list[InputField]]:
    """(entity keys, request fields) of the configured FeatureService, in declaration order."""
    from feast.repo_operations import parse_repo

    repo = cfg.feature_repo_path
    for path in (str(repo), str(cfg.root.resolve())):
        if path not in sys.path:
            sys.path.insert(0, path)
    with contextlib.chdir(repo):
        contents = parse_repo(Path(repo))
    services = {s.name: s for s in contents.feature_services}
    name = cfg.features.feature_service
    if name not in services:
        raise SchemaError(f"feature repo {repo} defines no FeatureService '{name}' (features.feature_service)")
    views = {v.name: v for v in contents.feature_views}
    odfvs = {v.name: v for v in contents.on_demand_feature_views}
    entities = {e.name: e for e in contents.entities}
    keys: dict[str, InputField] = {}
    fields: dict[str, InputField] = {}

    def add_view(view_name: str) -> None:
        view = views.get(view_name)
        if view is None:
            raise SchemaError(f"FeatureService '{name}' uses view '{view_name}', which the repo does not define")
        for entity_name in view.entities:
            entity = entities[entity_name]
            keys.setdefault(entity.join_key, InputField(entity.join_key, _kind(entity.value_type.name),
                                                        description=entity.description))  # fmt: skip

    for projection in services[name].feature_view_projections:
        odfv = odfvs.get(projection.name)
        if odfv is None:
            add_view(projection.name)
            continue
        for source in odfv.source_feature_view_projections.values():
            add_view(source.name)
        for source in odfv.source_request_sources.values():
            for f in source.schema:
                if f.name != REQUEST_TIME:
                    fields.setdefault(f.name, InputField(f.name, _kind(f.dtype.to_value_type().name),
                                                         description=f.description))  # fmt: skip
    return list(keys.values()), list(fields.values())


def _bounds(cfg: ProjectConfig, inputs: list[InputField]) -> list[InputField]:
    """Bounds and nullability from the contract (``validation.table_schema``) where it states them."""
    from dataclasses import replace

    from mlcycle.data.validation import table_schema

    try:
        schema = table_schema(cfg)
    except Exception:  # no readable contract: types only
        return inputs
    out = []
    for field in inputs:
        column = schema.columns.get(field.name)
        if column is None:
            out.append(field)
            continue
        bounds: dict[str, Any] = {"required": not column.nullable}
        for check in column.checks:
            stats = check.statistics or {}
            name = getattr(check, "name", "")
            if name == "greater_than":
                bounds["gt"] = stats.get("min_value")
            elif name == "greater_than_or_equal_to":
                bounds["ge"] = stats.get("min_value")
            elif name == "less_than":
                bounds["lt"] = stats.get("max_value")
            elif name == "less_than_or_equal_to":
                bounds["le"] = stats.get("max_value")
            elif name == "in_range":
                if stats.get("include_min", True):
                    bounds["ge"] = stats.get("min_value")
                else:
                    bounds["gt"] = stats.get("min_value")
                if stats.get("include_max", True):
                    bounds["le"] = stats.get("max_value")
                else:
                    bounds["lt"] = stats.get("max_value")
            elif "max_value" in stats and "min_value" not in stats:
                bounds["lt"] = stats["max_value"]
            if stats.get("allowed_values") is not None:
                known = ", ".join(str(v) for v in list(stats["allowed_values"])[:30])
                bounds["description"] = (
                    f"{field.description or 'Request field.'} Known values: {known}; another value is "
                    "scored and named in unknown_categories."
                )
        out.append(replace(field, **{k: v for k, v in bounds.items() if v is not None}))
    return out


def _annotation(field: InputField, key: bool) -> Any:
    limits = {k: getattr(field, k) for k in ("ge", "gt", "le", "lt") if getattr(field, k) is not None}
    if field.kind == "int":
        limits.setdefault("ge", INT64_MIN)
        limits.setdefault("le", INT64_MAX)
        return Annotated[int, Field(strict=True, **limits)]
    if field.kind == "float":
        return Annotated[float, Field(strict=True, allow_inf_nan=False, **limits)]
    if field.kind == "bool":
        return Annotated[bool, Field(strict=True)]
    return Annotated[str, Field(min_length=1, max_length=256 if key else 200)]


def _event_id_annotation(cfg: ProjectConfig) -> Any:
    """The event id's type as the contract has it (an integer id is strict: ``"7"`` is refused, as a
    number would be); text when the contract says text or says nothing."""
    from mlcycle.data.validation import table_schema

    integer = Annotated[int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX)]
    text = Annotated[str, Field(min_length=1, max_length=128)]
    try:
        column = table_schema(cfg).columns.get(cfg.table.event_id)
    except Exception:  # no readable contract: either form
        column = None
    dtype = str(column.dtype) if column is not None and column.dtype is not None else ""
    if "int" in dtype:
        return integer
    return text if dtype else integer | text


def request_model(cfg: ProjectConfig, name: str = "Request") -> type[BaseModel]:
    """The pydantic model of one request: entity keys, request fields, the event id (optional) and
    ``timestamp`` (the event's time; default now, no offset: UTC). Unknown fields are refused."""
    keys, fields = service_inputs(cfg)
    keys, fields = _bounds(cfg, keys), _bounds(cfg, fields)
    spec: dict[str, Any] = {}
    t = cfg.table
    if t.event_id and t.event_id not in {f.name for f in [*keys, *fields]}:
        spec[t.event_id] = (
            _event_id_annotation(cfg) | None,
            Field(None, description="The caller's event id, logged with the prediction so a later label joins it."),
        )
    for key in keys:
        spec[key.name] = (_annotation(key, True), Field(..., description=key.description or "Entity key."))
    for field in fields:
        annotation = _annotation(field, False)
        description = field.description or "Request field."
        if field.required:
            spec[field.name] = (annotation, Field(..., description=description))
        else:
            spec[field.name] = (annotation | None, Field(None, description=description))
    # Strict: a date-time is text, as the document declares (lax parsing took a JSON number as Unix
    # seconds, or as milliseconds past 2e10, so a client's wrong unit was scored at a wrong time).
    spec[TIMESTAMP_FIELD] = (
        Annotated[datetime, Field(strict=True)] | None,
        Field(None, description="When the event happened, ISO 8601 (default: now; without an offset: UTC)."),
    )
    return create_model(name, __config__=ConfigDict(extra="forbid"), **spec)
