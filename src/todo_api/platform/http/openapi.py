"""The OpenAPI document as the contract generated clients are built from.

FastAPI derives most of it from the routes; this module adds what it cannot know: stable
operation ids, the bearer scheme on every /api operation (in every AUTH_MODE: a client
generated from a development server must send tokens to a production one), the headers each
response carries, and parameters a route checks itself but clients must always send.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

# In a parameter's json_schema_extra: declared `required` although the route checks it itself
# (to answer with its own problem).
REQUIRED_MARK = "x-todo-required"

# Declared here rather than through a `Security(HTTPBearer())` dependency: that would run on
# every request only to read a header that `authorize` reads anyway.
BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "A JWT from the identity provider (Better Auth: `authClient.token()`); its "
    "user claim (AUTH_USER_CLAIM, default `sub`) must equal the path's `user_id`.",
}

ENTITY_TAG = r'^(W/)?"[^"]*"$'
HEADERS: dict[str, dict[str, Any]] = {
    "ETag": {
        "description": 'The task\'s version as an entity tag (`"3"`): send it back as '
        "If-Match to change the task only if nobody else did.",
        "schema": {"type": "string", "pattern": ENTITY_TAG},
    },
    "Location": {
        "description": "The URL of the created task.",
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the "
        "same Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Retry-After": {
        "description": "Seconds after which a retry may succeed.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WWW-Authenticate": {
        "description": "The RFC 6750 bearer challenge, with the reason when a token was sent.",
        "schema": {"type": "string"},
    },
    "X-Request-ID": {
        "description": "The request's id (the client's, if it sent a valid one): quote it when "
        "reporting a problem.",
        "schema": {"type": "string"},
    },
}


def operation_id(route: APIRoute) -> str:
    # Stable ids (`tasks-create_task`) give generated clients readable method names.
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def headers(*names: str) -> dict[str, Any]:
    """A response's `headers` entry for the named headers."""
    return {"headers": {name: HEADERS[name] for name in names}}


def complete_openapi(app: FastAPI, *, components: Callable[[], dict[str, Any]]) -> None:
    """Wrap `app.openapi`: add `components()` (schemas referenced by hand, such as the problem
    documents), the bearer scheme, X-Request-ID on every response, required marks."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            parts = schema.setdefault("components", {})
            parts.setdefault("schemas", {}).update(components())
            parts["securitySchemes"] = {"HTTPBearer": BEARER_SCHEME}
            for path, item in schema["paths"].items():
                for operation in item.values():
                    if path.startswith("/api/"):
                        operation["security"] = [{"HTTPBearer": []}]
                    _complete_operation(operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _complete_operation(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        if schema.pop(REQUIRED_MARK, False):
            parameter["required"] = True
        # A query parameter or header is present or absent, never null: `str | None = None`
        # in a route means "optional", which `required: false` already says.
        variants = schema.get("anyOf")
        if isinstance(variants, list) and {"type": "null"} in variants:
            others = [variant for variant in variants if variant != {"type": "null"}]
            if len(others) == 1:
                del schema["anyOf"]
                schema.update(others[0])
            else:  # a list id or `inbox`, say
                schema["anyOf"] = others
    for response in operation.get("responses", {}).values():
        response.setdefault("headers", {})["X-Request-ID"] = HEADERS["X-Request-ID"]
