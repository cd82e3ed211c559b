"""RFC 9457 problem details: every error this API returns has this shape.

Routes raise `ProblemError` subclasses; framework errors (unknown route, 405, validation) and
database failures are translated here, so no error ever leaves as HTML, plain text or a trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from todo_api.database import CONFLICT_SQLSTATES, describe_error, is_unavailable, sqlstate_of
from todo_api.logs import current_request_id
from todo_api.models import READ_ONLY_FIELDS
from todo_api.repository import IdempotencyKeyReused, StaleVersion

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 5

log = logging.getLogger("todo_api.errors")


class FieldError(BaseModel):
    location: str = Field(description="body, query, path or header", examples=["body"])
    field: str = Field(description="dotted path of the offending field", examples=["title"])
    message: str = Field(examples=["String should have at most 255 characters"])
    type: str = Field(description="machine-readable error code", examples=["string_too_long"])


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(default="about:blank", examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["No task 0b6a… for this user"])
    errors: list[FieldError] | None = Field(
        default=None, description="Present on 422: one entry per invalid field"
    )
    request_id: str | None = Field(
        default=None,
        description="The request's X-Request-ID: quote it when reporting a problem; "
        "the server's log lines for the request carry it too",
        examples=["5f0c2a7e9d1b4c3a8e6f0b1d2c3a4e5f"],
    )


class ProblemError(Exception):
    status: int = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class BadRequest(ProblemError):
    status = 400


class Unauthorized(ProblemError):
    """No usable credentials: `headers` must carry the `WWW-Authenticate` challenge (RFC 9110
    §15.5.2 requires one on every 401)."""

    status = 401


class Forbidden(ProblemError):
    """Authenticated, but not allowed to reach this resource."""

    status = 403


class NotFound(ProblemError):
    status = 404


class Conflict(ProblemError):
    status = 409


class ServiceUnavailable(ProblemError):
    status = 503


def problem_body(
    status: int, detail: str, errors: Sequence[FieldError] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = [error.model_dump() for error in errors]
    # Set by the observability middleware for every request it sees.
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    return body


def problem_bytes(status: int, detail: str) -> bytes:
    """For pure ASGI code that answers before FastAPI runs (e.g. the body size guard)."""
    return json.dumps(problem_body(status, detail)).encode()


def problem_response(
    status: int,
    detail: str,
    *,
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, detail, errors),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries declaring the problem schema for each error status."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def field_errors(raw: Sequence[Any]) -> list[FieldError]:
    result = []
    for error in raw:
        location, *path = [str(part) for part in error.get("loc", ())] or ["body"]
        field = ".".join(path)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        kind = str(error.get("type", "value_error"))
        if kind == "extra_forbidden":
            message = (
                f"{field} is read-only; it is set by the server"
                if field in READ_ONLY_FIELDS
                else f"unknown field {field!r}"
            )
        result.append(FieldError(location=location, field=field, message=message, type=kind))
    return result


async def _problem_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ProblemError)
    if error.status >= 500:
        # A 5xx is ours to fix: the traceback (and its cause) goes with the request id.
        operation = _operation(request)
        log.error(
            "%s answered %d: %s",
            operation,
            error.status,
            error.detail,
            exc_info=error,
            extra={"operation": operation},
        )
    return problem_response(error.status, error.detail, headers=error.headers)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    detail = str(error.detail)
    if error.status_code == 404 and detail == HTTPStatus(404).phrase:
        detail = f"No route matches {request.method} {request.url.path}"
    elif error.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(405, detail, headers={"Allow": _allowed_methods(request)})
    return problem_response(error.status_code, detail, headers=error.headers)


def _allowed_methods(request: Request) -> str:
    # Starlette builds Allow from the first route matching the path; with one route per
    # method that names one method. RFC 9110 wants all of them: ask the router for each.
    allowed = [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    raw = error.errors()
    if any(item.get("type") == "json_invalid" for item in raw):
        return problem_response(400, "The request body is not valid JSON")
    errors = field_errors(raw)
    summary = "; ".join(f"{e.field or e.location}: {e.message}" for e in errors)
    return problem_response(422, f"Invalid request: {summary}", errors=errors)


async def _database_error(request: Request, error: Exception) -> JSONResponse:
    operation = _operation(request)
    sqlstate = sqlstate_of(error)
    fields = {"operation": operation, "sqlstate": sqlstate}
    if is_unavailable(error):
        # One line per failed request, with the traceback, as for every 5xx; a warning, as
        # an outage is not a bug here (the 503 tells clients to retry).
        log.warning(
            "database unavailable during %s (SQLSTATE %s): %s",
            operation,
            sqlstate,
            describe_error(error),
            exc_info=error,
            extra=fields,
        )
        return problem_response(
            503,
            "The database is unavailable; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if sqlstate in CONFLICT_SQLSTATES:
        # Still losing to concurrent transactions after the data layer's retries: contention,
        # not a bug, and a later attempt will succeed.
        log.warning(
            "transaction conflict on %s persisted through retries (SQLSTATE %s)",
            operation,
            sqlstate,
            extra=fields,
        )
        return problem_response(
            503,
            "The change kept conflicting with concurrent changes; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if isinstance(error, sa_exc.IntegrityError):
        log.warning(
            "integrity error on %s (SQLSTATE %s): %s",
            operation,
            sqlstate,
            describe_error(error),
            extra=fields,
        )
        return problem_response(409, "The change conflicts with the stored data")
    # Any other database error is a bug here (bad SQL, a missing column): 500, with the
    # SQLSTATE that names it and the traceback.
    log.error(
        "database error on %s (SQLSTATE %s): %s",
        operation,
        sqlstate,
        describe_error(error),
        exc_info=error,
        extra=fields,
    )
    return problem_response(500, "An unexpected error occurred; it has been logged")


async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
    """The 500 problem for an error nothing else handled, logged once with its traceback.

    Also called by the observability middleware, which sits outside Starlette's handlers.
    """
    operation = _operation(request)
    log.error("unhandled error on %s", operation, exc_info=error, extra={"operation": operation})
    return problem_response(500, "An unexpected error occurred; it has been logged")


def _operation(request: Request) -> str:
    # The route template, not the raw path: user ids and task ids stay out of the log.
    template = getattr(request.scope.get("route"), "path_format", None)
    return f"{request.method} {template or request.url.path}"


async def _stale_version(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StaleVersion)
    current = f'"{error.current.version}"'
    return problem_response(
        412,
        f"If-Match does not match the task's current ETag {current}; "
        "fetch it again and retry with that ETag",
        headers={"ETag": current},
    )


async def _idempotency_key_reused(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, IdempotencyKeyReused)
    return problem_response(
        422,
        "This Idempotency-Key was already used with a different request body; "
        "use a new key for a different task",
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(StaleVersion, _stale_version)
    app.add_exception_handler(IdempotencyKeyReused, _idempotency_key_reused)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for database_error in (sa_exc.SQLAlchemyError, OSError, TimeoutError):
        app.add_exception_handler(database_error, _database_error)
    app.add_exception_handler(Exception, unexpected_error)
