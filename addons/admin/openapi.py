"""/openapi.json, made from the endpoint table itself (every route is in it by construction), and /docs,
a page that lists it without any script from the network."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from addons.admin import resources
from addons.admin.app import API_PREFIX
from addons.admin.endpoints import Endpoint

_PARAM = re.compile(r"{(\w+)}")
_ERROR = {"$ref": "#/components/schemas/Error"}


def _schema(kind: str | Mapping) -> dict:
    """A body field's schema: a plain OpenAPI type, or a whole schema (an object's fields, a nullable value)."""
    return {"type": kind} if isinstance(kind, str) else dict(kind)


def _operation(endpoint: Endpoint) -> dict:
    operation: dict = {
        "operationId": endpoint.method.lower() + re.sub(r"\W+", "_", endpoint.path).rstrip("_"),
        "summary": endpoint.summary,
        "tags": [endpoint.tag or endpoint.path.split("/")[1]],
        "parameters": [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                       for name in _PARAM.findall(endpoint.path)]
                      + [{"name": name, "in": "query", "required": False, "schema": {"type": kind}}
                         for name, kind in endpoint.query.items()],
        "responses": {
            str(endpoint.status): {"description": "success",
                                   "content": {"application/json": {"schema": {"type": "object"}}}},
            "default": {"description": "an error", "content": {"application/json": {"schema": _ERROR}}},
        },
    }
    if endpoint.idempotent:
        operation["parameters"].append({"name": "Idempotency-Key", "in": "header", "required": False,
                                        "schema": {"type": "string"}})
    if endpoint.method in ("POST", "PUT", "PATCH"):
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {name: _schema(kind) for name, kind in endpoint.body.items()}}}}}
    return operation


def document() -> dict:
    paths: dict[str, dict] = {}
    for endpoint in resources.ENDPOINTS:
        paths.setdefault(API_PREFIX + endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tollgate admin API", "version": "1",
                 "description": "Lava's REST resources over Tollgate's ledger, plus Tollgate's own. "
                                "Authenticate with `Authorization: Bearer tg_sk_...`."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["type", "code", "message"],
                "properties": {"type": {"type": "string"}, "code": {"type": "string"},
                               "message": {"type": "string"}, "param": {"type": "string"}}}}}},
        },
    }


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(document())


async def docs(request: Request) -> HTMLResponse:
    rows = "".join(
        f"<tr><td><code>{e.method}</code></td><td><code>{html.escape(API_PREFIX + e.path)}</code></td>"
        f"<td>{html.escape(e.summary)}</td></tr>" for e in resources.ENDPOINTS)
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><title>Tollgate API</title>"
        "<style>body{font:14px system-ui;margin:2em}td{padding:2px 10px}</style>"
        "<h1>Tollgate admin API</h1><p>Every call takes <code>Authorization: Bearer tg_sk_...</code>. "
        "The machine-readable document is <a href=/openapi.json>/openapi.json</a>.</p>"
        f"<table>{rows}</table>")


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi_json), Route("/docs", docs)]
