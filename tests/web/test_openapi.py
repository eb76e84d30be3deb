"""`GET /v1/openapi.json`: every route documented, every documented route served, refs sound."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from relay.web import openapi
from relay.web.app import create_app
from tests.conftest import ADMIN_TOKEN, RelayFactory, auth, make_config

METHODS = {"get", "post", "put", "patch", "delete"}


def _router_operations(tmp_path: Path, webhook_path: str) -> set[tuple[str, str]]:
    config = make_config(tmp_path, webhooks={"path": webhook_path})
    app = create_app(config)
    out = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds one per GET
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info["formatter"]
        if path == config.console.path or path.startswith(config.console.path + "/"):
            continue  # the admin console: HTML pages for browsers, not the JSON API
        # `{id:\d{1,18}}` (a regex-constrained variable) is `{id}` in OpenAPI
        out.add((route.method.lower(), re.sub(r"\{(\w+):[^}]*\}+", r"{\1}", path)))
    return out


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item
            if method in METHODS}


@pytest.mark.parametrize("webhook_path", ["/v1/webhooks/attesto", "/hooks/attesto"])
def test_every_route_is_documented_and_every_documented_route_exists(
        tmp_path: Path, webhook_path: str) -> None:
    served = _router_operations(tmp_path, webhook_path)
    documented = _documented(openapi.document(webhook_path))
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "documented routes the app does not serve"
    assert ("post", webhook_path) in served


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [
            r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_refs_resolve_and_path_parameters_are_declared() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    for target in _refs(doc):
        assert target.startswith("#/components/schemas/")
        assert target.rsplit("/", 1)[1] in doc["components"]["schemas"], target
    schemes = doc["components"]["securitySchemes"]
    for path, item in doc["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)
            assert any(s.startswith("2") for s in op["responses"]), (method, path)
            for requirement in op["security"]:
                assert set(requirement) <= set(schemes)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    assert response["x-error-codes"], (method, path, status)


def _conforms(value: Any, schema: dict[str, Any], schemas: dict[str, Any]) -> bool:
    """A small subset of JSON Schema: $ref, type, const, enum, required, properties, items,
    oneOf. Enough to catch a handler and the document drifting apart."""
    if "$ref" in schema:
        return _conforms(value, schemas[schema["$ref"].rsplit("/", 1)[1]], schemas)
    if "oneOf" in schema:
        return sum(_conforms(value, s, schemas) for s in schema["oneOf"]) == 1
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    types = schema.get("type")
    if types is not None:
        kinds = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
                 "object": dict, "array": list, "null": type(None)}
        wanted = types if isinstance(types, list) else [types]
        if not any(isinstance(value, kinds[t]) for t in wanted):  # type: ignore[arg-type]
            return False
    if isinstance(value, dict):
        if not set(schema.get("required", ())) <= set(value):
            return False
        return all(_conforms(value[k], s, schemas)
                   for k, s in schema.get("properties", {}).items() if k in value)
    if isinstance(value, list) and "items" in schema:
        return all(_conforms(v, schema["items"], schemas) for v in value)
    return True


async def test_served_document_matches_live_answers(relay_factory: RelayFactory) -> None:
    client = await relay_factory()
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc == openapi.document()
    schemas = doc["components"]["schemas"]

    def schema_of(method: str, path: str, status: str) -> dict[str, Any]:
        content = doc["paths"][path][method]["responses"][status]["content"]
        return dict(content["application/json"]["schema"])

    cases = [("get", "/healthz", {}, "200"), ("get", "/readyz", {}, "200"),
             ("get", "/v1/events", auth(), "200"),
             ("get", "/v1/admin/endpoints", auth(ADMIN_TOKEN), "200"),
             ("get", "/v1/admin/deliveries", auth(ADMIN_TOKEN), "200"),
             ("get", "/v1/users/{user_id}/entitlements", auth(), "200"),
             ("get", "/v1/events", {}, "401"),
             ("get", "/v1/admin/deliveries/{id}", auth(ADMIN_TOKEN), "404")]
    for method, path, headers, status in cases:
        url = path.replace("{user_id}", "u1").replace("{id}", "12345")
        answer = await client.request(method, url, headers=headers)
        assert str(answer.status) == status, (path, await answer.text())
        body = await answer.json()
        assert _conforms(body, schema_of(method, path, status), schemas), (path, body)
        if status.startswith("4"):
            codes = doc["paths"][path][method]["responses"][status]["x-error-codes"]
            assert body["error"]["code"] in codes
    # and the checker itself can say no
    assert not _conforms({"status": "ok"}, schema_of("get", "/readyz", "200"), schemas)
