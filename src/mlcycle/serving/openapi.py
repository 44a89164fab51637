"""The OpenAPI document of a BentoML service, made true to what the service answers.

BentoML 1.4 builds the document it serves at ``/docs.json`` (``_bentoml_sdk.service.openapi``)
from the API signatures, and a client generated from it breaks on the service's real answers:

- every API is declared to answer 200, 400, 404 and 500 only, each error with a ``detail`` that is a
  string, while a validation error's ``detail`` is a list of objects (pydantic's errors, one per
  field at fault), and an API's other answers (401 from a token check, 503 from a dependency that
  is down, 409, 415, BentoML's own 504) cannot be declared at all;
- the answer's schema is flattened to one level, and each ``anyOf`` is cut to its first member
  (``_bentoml_sdk.method._flatten_field``): ``str | None`` is declared a plain string, and the null
  the service answers breaks a strict client;
- the schemas are pydantic's JSON Schema (draft 2020-12) in a document that says OpenAPI 3.0, which
  has no ``{"type": "null"}``, and whose ``exclusiveMinimum`` is a boolean, not a number.

``openapi_document`` rebuilds each operation from BentoML's document and the API definitions: the
request body and every declared answer (``Answer``) from their pydantic types, in OpenAPI 3.0 form,
and the header tokens an operation takes (``HeaderToken``). ``ServeDocument`` answers the
document's path with it, in front of BentoML's own route. A test runs schemathesis against a live
service to hold the document to the answers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

REF_TEMPLATE = "#/components/schemas/{model}"
REF_PREFIX = REF_TEMPLATE.split("{", 1)[0]
JSON = "application/json"
Mode = Literal["validation", "serialization"]
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
VALUES = frozenset({"enum", "const", "default", "example", "examples", "required"})


class ErrorMessage(BaseModel):
    """An error answer with one message: what BentoML answers for a token check (401), a timeout
    (504) or an unexpected error (500), and what the service answers for a body it does not take."""

    error: str = Field(description="What went wrong, for a person to read.")


class ValidationIssue(BaseModel):
    """One fault in a request: pydantic's error, without the input (a caller's values are not echoed)."""

    type: str = Field(description="The kind of fault (pydantic's error type, e.g. 'missing', 'int_type').")
    loc: list[str | int] = Field(description="Where: the path of the field at fault, e.g. ['request', 'timestamp'].")
    msg: str = Field(description="The fault, for a person to read.")
    url: str | None = Field(None, description="Where the error type is documented (absent for some).")


class ValidationFailure(BaseModel):
    """The answer to a request that is not valid JSON or has a field at fault (400): every fault,
    each with the field's location, so a caller can fix all of them at once."""

    error: str = Field(description="How many faults, e.g. '2 validation error for Input'.")
    detail: list[ValidationIssue]


class DocumentError(ValueError):
    """The declarations name a route the service does not have, or an answer twice."""


@dataclass(frozen=True)
class Answer:
    """One status an operation answers, why, and the body's type (a pydantic model or a type pydantic
    describes, e.g. ``list[Model]``); ``body=None`` declares the status without a body."""

    status: int
    description: str
    body: Any = None
    media_type: str = JSON


@dataclass(frozen=True)
class HeaderToken:
    """A secret a caller sends in a header (an API key): ``scheme`` names it in the document."""

    scheme: str
    header: str
    description: str


def openapi_3_0(schema: Any) -> Any:
    """A pydantic JSON Schema (draft 2020-12) in the OpenAPI 3.0 dialect: null as ``nullable``,
    numeric exclusive bounds as 3.0's boolean ones, ``const`` as a one-value ``enum``, a ``$ref``
    with siblings (which 3.0 ignores) wrapped in ``allOf``. A copy; the argument is left as it is."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in SCHEMA_MAPS and isinstance(value, dict):  # names → schemas (a property may be named "type")
            out[key] = {name: openapi_3_0(item) for name, item in value.items()}
        elif key in VALUES:  # data, not schemas
            out[key] = value
        elif isinstance(value, list):  # anyOf, oneOf, allOf, prefixItems
            out[key] = [openapi_3_0(item) for item in value]
        else:
            out[key] = openapi_3_0(value)
    if isinstance(out.get("type"), list):  # ["string", "null"]: pydantic does not emit it, others do
        types = [t for t in out.pop("type") if t != "null"]
        if len(types) < len(schema["type"]):
            out["nullable"] = True
        if len(types) == 1:
            out["type"] = types[0]
        elif types:
            out["anyOf"] = [{"type": t} for t in types]
    for key in ("anyOf", "oneOf"):
        members = out.get(key)
        if not isinstance(members, list) or not any(m == {"type": "null"} for m in members):
            continue
        rest = [m for m in members if m != {"type": "null"}]
        out["nullable"] = True
        del out[key]
        if len(rest) == 1 and "$ref" in rest[0]:
            out["allOf"] = rest
        elif len(rest) == 1:
            out = {**rest[0], **out}
        elif rest:
            out[key] = rest
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        limit = out.get(exclusive)
        if isinstance(limit, bool) or limit is None:
            continue
        inclusive = out.get(bound)
        tighter = inclusive is None or (limit >= inclusive if bound == "minimum" else limit <= inclusive)
        if tighter:
            out[bound], out[exclusive] = limit, True
        else:
            del out[exclusive]
    if "examples" in out and isinstance(out["examples"], list):
        examples = out.pop("examples")
        if examples:
            out.setdefault("example", examples[0])
    if "$ref" in out and len(out) > 1:
        out = {key: value for key, value in out.items() if key != "$ref"} | {"allOf": [{"$ref": out["$ref"]}]}
    return out


def schema_of(body: Any, components: dict[str, Any], mode: Mode = "serialization") -> dict[str, Any]:
    """The OpenAPI 3.0 schema of a type, its models added to ``components`` (a model itself is
    referenced, not inlined: a generated client gets one class per model)."""
    schema = TypeAdapter(body).json_schema(ref_template=REF_TEMPLATE, mode=mode)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = openapi_3_0(definition)
    if isinstance(body, type) and issubclass(body, BaseModel):
        components[body.__name__] = openapi_3_0(schema)
        return {"$ref": REF_TEMPLATE.format(model=body.__name__)}
    return openapi_3_0(schema)


def _model_schema(model: type[BaseModel], components: dict[str, Any], mode: Mode) -> dict[str, Any]:
    """A BentoML IO model's schema, inline (its title is BentoML's, e.g. ``Input``), nested models
    added to ``components``."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = openapi_3_0(definition)
    return openapi_3_0(schema)


def _responses(answers: Sequence[Answer], components: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for answer in answers:
        key = str(answer.status)
        if key in out:
            raise DocumentError(f"status {answer.status} is declared twice for one operation")
        out[key] = {"description": answer.description}
        if answer.body is not None:
            out[key]["content"] = {answer.media_type: {"schema": schema_of(answer.body, components)}}
    return out


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            yield ref[len(REF_PREFIX) :]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _referenced(document: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """The schemas the paths reach (directly or through other schemas), in their original order:
    BentoML's error schemas with a string ``detail`` and its IO wrappers go once nothing names them."""
    reached: set[str] = set()
    todo = list(_refs(document["paths"]))
    while todo:
        name = todo.pop()
        if name in reached or name not in schemas:
            continue
        reached.add(name)
        todo.extend(_refs(schemas[name]))
    return {name: schema for name, schema in schemas.items() if name in reached}


def openapi_document(
    base: Mapping[str, Any],
    apis: Mapping[str, Any],
    answers: Mapping[str, Sequence[Answer]],
    *,
    tokens: Sequence[HeaderToken] = (),
    security: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The document ``base`` (BentoML's, as a dict) with each API operation rebuilt.

    ``apis`` are the service's API methods (``Service.apis``: ``route``, ``input_spec``,
    ``output_spec``). ``answers`` maps a path to the statuses it answers: for an API route they are
    all its answers (a 200 not given is the API's return type), for another path of ``base`` (a probe)
    they are added to its own. ``security`` maps a route to the token schemes, any one of which lets
    a caller in (``tokens`` describes them); a route not named takes none."""
    document = copy.deepcopy(dict(base))
    # BentoML's own components too, in case one is still named (it writes pydantic's 2020-12 form).
    components = {
        name: openapi_3_0(schema) for name, schema in document.get("components", {}).get("schemas", {}).items()
    }
    paths: dict[str, Any] = document["paths"]
    routes = {api.route: api for api in apis.values()}
    schemes = {token.scheme for token in tokens}
    for path in (*answers, *(security or {})):
        if path not in paths and path not in routes:
            raise DocumentError(f"answers are declared for {path}, which the service does not have")
    for scheme in (s for names in (security or {}).values() for s in names):
        if scheme not in schemes:
            raise DocumentError(f"security names the scheme {scheme!r}, which no HeaderToken describes")
    for route, api in routes.items():
        declared = list(answers.get(route, ()))
        operation = paths[route]["post"]
        responses = _responses(declared, components)
        if "200" not in responses:
            content = {
                api.output_spec.mime_type(): {"schema": _model_schema(api.output_spec, components, "serialization")}
            }
            responses = {"200": {"description": "Successful Response", "content": content}, **responses}
        operation["responses"] = dict(sorted(responses.items()))
        body = _model_schema(api.input_spec, components, "validation")
        # An API without a required parameter takes no body at all (BentoML reads none as {}).
        operation["requestBody"] = {
            "required": bool(body.get("required")),
            "content": {api.input_spec.mime_type(): {"schema": body}},
        }
    for path, declared in answers.items():
        if path in routes:
            continue
        for operation in paths[path].values():
            added = _responses(declared, components)
            clash = set(added) & set(operation["responses"])
            if clash:
                raise DocumentError(f"{path} already declares {sorted(clash)}")
            operation["responses"] = dict(sorted({**operation["responses"], **added}.items()))
    for path, names in (security or {}).items():
        for operation in paths[path].values():
            operation["security"] = [{name: []} for name in names]
    document.setdefault("components", {})["schemas"] = _referenced(document, components)
    if tokens:
        document["components"]["securitySchemes"] = {
            t.scheme: {"type": "apiKey", "in": "header", "name": t.header, "description": t.description} for t in tokens
        }
    return document


class ServeDocument:
    """ASGI middleware: ``GET`` (or ``HEAD``) of ``path`` answers the document ``build()`` makes,
    built at the first request and kept (BentoML's own view rebuilds its document every time)."""

    def __init__(self, app: Any, path: str, build: Callable[[], Mapping[str, Any]]) -> None:
        self.app, self.path, self.build = app, path, build
        self._body: bytes | None = None

    def body(self) -> bytes:
        if self._body is None:
            self._body = json.dumps(self.build(), ensure_ascii=False, allow_nan=False).encode()
        return self._body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body = self.body()
        headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
