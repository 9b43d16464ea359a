"""The OpenAPI document: kept current in docs/, served, valid, and true to what the server sends."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from falcon.testing import ASGIConductor, Result
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from schemathesis.specs.openapi.definitions import OPENAPI_31

from reports_service import __version__, protocol
from reports_service.openapi import SCHEMAS, STRUCTS, build_document, render

from .conftest import TOKEN, WRITE_TOKEN
from .drift import assert_current

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "openapi.json"
REGENERATE = "python -m reports_service.openapi > docs/openapi.json"
URI = "urn:reports-service:openapi"
READ = {"Authorization": f"Bearer {TOKEN}"}
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}


class Spec:
    """An OpenAPI document, read the way a client would read its responses."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.doc = document
        resource = DRAFT202012.create_resource(document)
        self.registry: Registry[Any] = Registry().with_resource(URI, resource)

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        """``node``, or what its local ``$ref`` points at."""
        ref = node.get("$ref")
        if ref is None:
            return node
        assert ref.startswith("#/"), f"not a local reference: {ref}"
        found: Any = self.doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(found, dict) and part in found, f"{ref} does not resolve"
            found = found[part]
        assert isinstance(found, dict), ref
        return found

    def errors(self, schema: dict[str, Any], value: Any) -> list[str]:
        # NOTE: the refs inside ``schema`` are relative to the document, so it is wrapped in
        #   the document's own resource.
        wrapped = {**self.doc, "$defs": {"x": schema}}
        registry = self.registry.with_resource(URI, DRAFT202012.create_resource(wrapped))
        validator = Draft202012Validator({"$ref": f"{URI}#/$defs/x"}, registry=registry)
        return [e.message for e in validator.iter_errors(value)]

    def check(self, method: str, path: str, result: Result) -> None:
        """``result`` is a response the document gives ``method path``: status, content type,
        body and headers."""
        operation = self.doc["paths"][path][method.lower()]
        status = str(result.status_code)
        assert status in operation["responses"], f"{method} {path} does not document {status}"
        response = self.resolve(operation["responses"][status])
        content = response.get("content")
        if content is None:
            assert result.content == b"", f"{method} {path} {status} has a body"
        else:
            media = (result.content_type or "").split(";")[0].strip()
            assert media in content, f"{method} {path} {status}: {media} is not documented"
            if media.endswith("json"):
                errors = self.errors(content[media]["schema"], result.json)
                assert not errors, f"{method} {path} {status}: {result.json!r}: {errors}"
        for name, header in response.get("headers", {}).items():
            value = result.headers.get(name)
            assert value is not None, f"{method} {path} {status} has no {name}"
            errors = self.errors(self.resolve(header)["schema"], value)
            assert not errors, f"{method} {path} {status}: {name}: {value!r}: {errors}"


@pytest.fixture(scope="module")
def spec() -> Spec:
    return Spec(build_document())


# -- the copy in docs/, and the one served --------------------------------------------------


def test_docs_copy_is_current() -> None:
    assert_current(DOCUMENT, render(), REGENERATE)


async def test_served_at_openapi_json(conductor: ASGIConductor, spec: Spec) -> None:
    result = await conductor.simulate_get("/openapi.json")
    assert result.status_code == 200
    assert result.json == build_document()
    spec.check("GET", "/openapi.json", result)


# -- the document itself --------------------------------------------------------------------


def test_document_is_openapi_3_1(spec: Spec) -> None:
    errors = [e.message for e in Draft202012Validator(OPENAPI_31).iter_errors(spec.doc)]
    assert not errors, errors
    assert spec.doc["openapi"].startswith("3.1.")
    assert spec.doc["info"]["version"] == __version__
    for schema in spec.doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)

    # NOTE: schemathesis reads every operation, as it does to test the live server.
    labels = set()
    for result in schemathesis.openapi.from_dict(spec.doc).get_all_operations():
        labels.add(result.ok().label)  # type: ignore[union-attr]
    assert {"GET /api/reports", "PUT /api/reports/{name}", "GET /api/changes"} <= labels
    ids = [
        op["operationId"]
        for path in spec.doc["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    assert len(ids) == len(set(ids)) == len(labels)


def test_every_ref_resolves(spec: Spec) -> None:
    def refs(node: Any) -> typing.Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(spec.doc):
        spec.resolve({"$ref": ref})


@pytest.mark.parametrize("struct", STRUCTS, ids=lambda s: s.__name__)
def test_struct_schemas_are_msgspecs(spec: Spec, struct: type[msgspec.Struct]) -> None:
    _, schemas = msgspec.json.schema_components([struct], ref_template=SCHEMAS)
    for name, schema in schemas.items():
        assert spec.doc["components"]["schemas"][name] == schema, name


def test_problem_codes_are_the_error_codes(spec: Spec) -> None:
    code = spec.doc["components"]["schemas"]["Problem"]["properties"]["code"]
    enums = [s["enum"] for s in code["anyOf"] if "enum" in s]
    assert enums == [sorted(typing.get_args(protocol.ErrorCode))]


def test_every_api_operation_needs_a_token_and_documents_its_errors(spec: Spec) -> None:
    for path, item in spec.doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if not path.startswith("/api/"):
                assert "security" not in operation, f"{method} {path}"
                continue
            assert {"bearer": []} in operation["security"], f"{method} {path}"
            for status in ("401", "429", "503"):
                assert status in operation["responses"], f"{method} {path} {status}"
            for status, response in operation["responses"].items():
                if status >= "400":
                    assert "application/problem+json" in spec.resolve(response)["content"]
    unauthorized = spec.resolve({"$ref": "#/components/responses/Unauthorized"})
    assert "WWW-Authenticate" in unauthorized["headers"]
    for name in ("TooManyRequests", "Unavailable"):
        response = spec.resolve({"$ref": f"#/components/responses/{name}"})
        assert "Retry-After" in response["headers"], name


def test_events_are_documented(spec: Spec) -> None:
    response = spec.doc["paths"]["/api/changes"]["get"]["responses"]["200"]
    assert set(response["content"]) == {"text/event-stream"}
    for struct in (protocol.ReportEvent, protocol.ResyncEvent):
        assert f"#/components/schemas/{struct.__name__}" in response["description"]
    for kind in typing.get_args(typing.get_type_hints(protocol.ReportEvent)["type"]):
        assert kind in response["description"], kind


# -- real responses against the document ----------------------------------------------------


async def test_report_responses_match_the_document(conductor: ASGIConductor, spec: Spec) -> None:
    one = "/api/reports/{name}"
    body = json.dumps({"title": "Q1", "content": "sales"})
    json_write = {**WRITE, "Content-Type": "application/json"}

    put = await conductor.simulate_put("/api/reports/q1", headers=json_write, body=body)
    assert put.status_code == 201
    spec.check("PUT", one, put)
    again = await conductor.simulate_put(
        "/api/reports/q1", headers={**json_write, "If-Match": put.headers["etag"]}, body=body
    )
    assert again.status_code == 200
    spec.check("PUT", one, again)
    for headers, status in [
        ({**json_write, "If-None-Match": "*"}, 412),
        ({**READ, "Content-Type": "application/json"}, 403),
        ({**WRITE, "Content-Type": "text/plain"}, 415),
        ({**json_write, "If-Match": "12"}, 400),
        ({"Content-Type": "application/json"}, 401),
    ]:
        result = await conductor.simulate_put("/api/reports/q1", headers=headers, body=body)
        assert result.status_code == status, headers
        spec.check("PUT", one, result)
    too_big = json.dumps({"title": "big", "content": "x" * 70_000})
    result = await conductor.simulate_put("/api/reports/q1", headers=json_write, body=too_big)
    assert result.status_code == 413
    spec.check("PUT", one, result)

    got = await conductor.simulate_get("/api/reports/q1", headers=READ)
    assert (got.status_code, got.json["title"]) == (200, "Q1")
    spec.check("GET", one, got)
    for headers, status in [
        ({**READ, "If-None-Match": got.headers["etag"]}, 304),
        ({"Authorization": "Bearer nope"}, 401),
    ]:
        result = await conductor.simulate_get("/api/reports/q1", headers=headers)
        assert result.status_code == status
        spec.check("GET", one, result)
    missing = await conductor.simulate_get("/api/reports/q9", headers=READ)
    assert missing.status_code == 404
    spec.check("GET", one, missing)

    for path, status in [("/api/reports/q9", 404), ("/api/reports/q1", 204)]:
        result = await conductor.simulate_delete(path, headers=WRITE)
        assert result.status_code == status
        spec.check("DELETE", one, result)

    for query, status in [("limit=2", 200), ("q=report", 200), ("cursor=x", 400)]:
        result = await conductor.simulate_get("/api/reports", headers=READ, query_string=query)
        assert result.status_code == status, query
        spec.check("GET", "/api/reports", result)


async def test_plain_responses_match_the_document(conductor: ASGIConductor, spec: Spec) -> None:
    for path in ("/hello", "/healthz", "/readyz", "/metrics", "/asyncapi.json"):
        result = await conductor.simulate_get(path)
        assert result.status_code == 200, path
        spec.check("GET", path, result)


async def test_a_bad_stream_request_matches_the_document(
    conductor: ASGIConductor, spec: Spec
) -> None:
    for query, headers, status in [
        ("since=x", READ, 400),
        ("since=1", {}, 401),
        ("frobnicate=1", READ, 400),
    ]:
        result = await conductor.simulate_get("/api/changes", headers=headers, query_string=query)
        assert result.status_code == status, query
        spec.check("GET", "/api/changes", result)
