"""The scoring service's OpenAPI document, built in this process (no server): valid OpenAPI 3.0, and
declaring every answer the service gives. tests/test_init_project_e2e.py holds the document to a
live service's answers with schemathesis; this is the fast check of its form and declarations."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field
from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

from mlcycle.serving.openapi import Answer, DocumentError, openapi_3_0, openapi_document, schema_of

REPO_ROOT = Path(__file__).resolve().parents[1]
API_ROUTES = ("/predict", "/predict_batch", "/rollout/status", "/admin/traffic", "/admin/rollback")


class Inner(BaseModel):
    name: str


class Outer(BaseModel):
    note: str | None = None
    inner: Inner | None = None
    count: int = Field(0, gt=0, le=10)


def test_null_and_exclusive_bounds_are_written_as_openapi_3_0_has_them() -> None:
    components: dict[str, Any] = {}
    ref = schema_of(Outer, components)
    assert ref == {"$ref": "#/components/schemas/Outer"}
    props = components["Outer"]["properties"]
    assert props["note"]["type"] == "string" and props["note"]["nullable"] is True and "anyOf" not in props["note"]
    # A $ref's siblings are ignored in 3.0: the nullable reference is an allOf.
    assert props["inner"]["allOf"] == [{"$ref": "#/components/schemas/Inner"}] and props["inner"]["nullable"]
    assert (props["count"]["minimum"], props["count"]["exclusiveMinimum"], props["count"]["maximum"]) == (0, True, 10)
    assert "Inner" in components
    assert openapi_3_0({"const": "x"}) == {"enum": ["x"]}
    assert openapi_3_0({"type": ["integer", "null"]}) == {"type": "integer", "nullable": True}
    # The tighter of an inclusive and an exclusive bound wins.
    assert openapi_3_0({"minimum": 5, "exclusiveMinimum": 0}) == {"minimum": 5}
    assert openapi_3_0({"minimum": -10, "exclusiveMinimum": 0}) == {"minimum": 0, "exclusiveMinimum": True}


def test_answers_for_a_route_the_service_does_not_have_are_refused() -> None:
    base = {"openapi": "3.0.2", "paths": {"/readyz": {"get": {"responses": {"200": {"description": "ok"}}}}}}
    with pytest.raises(DocumentError, match="/nowhere"):
        openapi_document(base, {}, {"/nowhere": [Answer(503, "down")]})
    with pytest.raises(DocumentError, match="already declares"):
        openapi_document(base, {}, {"/readyz": [Answer(200, "again")]})


@pytest.fixture(scope="module")
def service_module(monkeypatch_module: pytest.MonkeyPatch):
    """services/service.py as `bentoml serve` imports it (the repo's own project), with both tokens set."""
    monkeypatch_module.setenv("MLCYCLE_API_KEY", "k")
    monkeypatch_module.setenv("MLCYCLE_ADMIN_TOKEN", "a")
    monkeypatch_module.delenv("MLCYCLE_CONFIG", raising=False)
    monkeypatch_module.chdir(REPO_ROOT)
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from services import service
    finally:
        sys.path.remove(str(REPO_ROOT))
    return service


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_service_document_is_openapi_3_0_and_declares_every_answer(service_module) -> None:
    """Issue 22: BentoML's document declared a string `detail`, a non-nullable `error`, no 401 or 503,
    and was not valid OpenAPI 3.0 (`{"type": "null"}`, numeric `exclusiveMinimum`)."""
    assert os.environ["MLCYCLE_API_KEY"] == "k"
    document = service_module.api_document()
    errors = [str(e)[:300] for e in OPENAPI_30_VALIDATOR.iter_errors(document)]
    assert errors == [], errors
    schemas = document["components"]["schemas"]
    paths = document["paths"]
    for route in API_ROUTES:
        responses = paths[route]["post"]["responses"]
        assert {"200", "400", "401", "415", "500", "504"} <= set(responses), (route, sorted(responses))
        assert responses["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ValidationFailure"
        }
        assert "404" not in responses  # BentoML's default, never answered on an API route
    detail = schemas["ValidationFailure"]["properties"]["detail"]
    assert detail["type"] == "array" and detail["items"] == {"$ref": "#/components/schemas/ValidationIssue"}
    assert schemas["ValidationIssue"]["properties"]["loc"]["type"] == "array"
    assert {"503"} <= set(paths["/predict"]["post"]["responses"]) and "503" in paths["/predict_batch"]["post"][
        "responses"
    ]
    assert "409" in paths["/admin/rollback"]["post"]["responses"]
    assert "503" in paths["/readyz"]["get"]["responses"]
    prediction = schemas["Prediction"]["properties"]
    assert prediction["error"]["nullable"] and prediction["score"]["nullable"]
    assert set(schemas) >= {"Request", "TrafficChange", "RolloutStatus", "RolloutPolicy", "Rollback"}
    # BentoML's error schemas (a string `detail`) are gone once nothing names them.
    assert not {"InvalidArgument", "NotFound", "InternalServerError"} & set(schemas)
    # The tokens, as configured: the API key guards scoring, the admin token the admin endpoints.
    assert paths["/predict"]["post"]["security"] == [{"ApiKey": []}]
    assert paths["/admin/traffic"]["post"]["security"] == [{"AdminToken": []}]
    assert paths["/rollout/status"]["post"]["security"] == [{"ApiKey": []}, {"AdminToken": []}]
    assert document["components"]["securitySchemes"]["ApiKey"]["name"] == "x-api-key"
    # A request's time is text (a number is not a time), and optional.
    timestamp = schemas["Request"]["properties"]["timestamp"]
    assert (timestamp["type"], timestamp["format"], timestamp["nullable"]) == ("string", "date-time", True)


def test_a_property_named_like_a_keyword_and_a_default_are_left_as_they_are() -> None:
    schema = {
        "type": "object",
        "properties": {"const": {"type": "string"}, "type": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "default": {"const": 1, "minimum": 0, "exclusiveMinimum": 5},
    }
    out = openapi_3_0(schema)
    assert out["properties"]["const"] == {"type": "string"}
    assert out["properties"]["type"] == {"type": "string", "nullable": True}
    assert out["default"] == schema["default"]
