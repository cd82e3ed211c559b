"""RFC 9457 problem details: every error this API returns has this shape.

Routes raise `ProblemError` subclasses; framework errors (unknown route, 405, validation) and
database failures are translated here, so no error ever leaves as HTML, plain text or a trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from todo_api.platform.database.errors import DatabaseError, Failure
from todo_api.platform.http.openapi import headers
from todo_api.platform.observability.logs import current_request_id

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

    type: str = Field(examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["No task 0b6a… for this user"])
    request_id: str = Field(
        description="The request's X-Request-ID: quote it when reporting a problem; "
        "the server's log lines for the request carry it too",
        examples=["5f0c2a7e9d1b4c3a8e6f0b1d2c3a4e5f"],
    )


class ValidationProblem(Problem):
    """The 422 problem: also one entry per invalid field (or header)."""

    errors: list[FieldError]


def problem_schemas() -> dict[str, Any]:
    """The problem documents' JSON schemas, for the OpenAPI components."""
    schemas: dict[str, Any] = {}
    for model in (Problem, ValidationProblem, QuotaProblem):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


class QuotaProblem(Problem):
    """403 `/problems/quota-exceeded`: a write would take the user past a quota."""

    resource: str = Field(description="What ran out", examples=["tasks"])
    limit: int = Field(description="The quota", examples=[100_000])


class ProblemError(Exception):
    """An error with its HTTP status; raised anywhere, answered as a problem document.
    `problem_type` and `members` make it a typed problem (RFC 9457 §3.1, §3.2)."""

    status: int = 500
    problem_type: str = "about:blank"
    members: Mapping[str, Any] = {}

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: Sequence[FieldError] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.errors = errors


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


class PreconditionFailed(ProblemError):
    status = 412


class UnprocessableContent(ProblemError):
    """A well-formed request that cannot be carried out; `errors` names the fields."""

    status = 422


class Gone(ProblemError):
    status = 410


class TooManyRequests(ProblemError):
    """`headers` must carry `Retry-After`."""

    status = 429


class ServiceUnavailable(ProblemError):
    status = 503


QUOTA_EXCEEDED = "/problems/quota-exceeded"


class QuotaExceeded(ProblemError):
    status = 403
    problem_type = QUOTA_EXCEEDED

    def __init__(self, resource: str, limit: int, detail: str | None = None) -> None:
        super().__init__(detail or f"Quota exceeded: at most {limit} {resource} per user")
        self.members = {"resource": resource, "limit": limit}


def problem_body(
    status: int,
    detail: str,
    errors: Sequence[FieldError] | None = None,
    *,
    problem_type: str = "about:blank",
    members: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem_type,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = [error.model_dump() for error in errors]
    body.update(members or {})
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
    problem_type: str = "about:blank",
    members: Mapping[str, Any] | None = None,
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, detail, errors, problem_type=problem_type, members=members),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


# Headers an error answer carries, by status.
_ERROR_HEADERS = {
    401: ("WWW-Authenticate",),
    412: ("ETag",),
    429: ("Retry-After",),
    503: ("Retry-After",),
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries declaring the problem schema (and headers) of each error
    status."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {
                PROBLEM_MEDIA_TYPE: {
                    "schema": {
                        "$ref": "#/components/schemas/"
                        + ("ValidationProblem" if status == 422 else "Problem")
                    }
                }
            },
            **headers(*_ERROR_HEADERS.get(status, ())),
        }
        for status in statuses
    }


def quota_responses() -> dict[int | str, dict[str, Any]]:
    """The 403 of a route that can exceed a quota: a quota problem, or (token for another
    user) a plain one."""
    schemas = [
        {"$ref": "#/components/schemas/QuotaProblem"},
        {"$ref": "#/components/schemas/Problem"},
    ]
    return {
        403: {
            "description": "Forbidden, or a quota exceeded (`type` /problems/quota-exceeded)",
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"anyOf": schemas}}},
        }
    }


def field_errors(raw: Sequence[Any], read_only: frozenset[str] = frozenset()) -> list[FieldError]:
    """One entry per pydantic error; `read_only`: field names the server sets, whose presence
    in a body is named as such rather than as an unknown field."""
    result = []
    for error in raw:
        location, *path = [str(part) for part in error.get("loc", ())] or ["body"]
        field = ".".join(path)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        kind = str(error.get("type", "value_error"))
        if kind == "extra_forbidden":
            message = (
                f"{field} is read-only; it is set by the server"
                if field in read_only
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
    return problem_response(
        error.status,
        error.detail,
        errors=error.errors,
        headers=error.headers,
        problem_type=error.problem_type,
        members=error.members,
    )


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


def _validation_error(
    read_only: frozenset[str],
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        raw = error.errors()
        if any(item.get("type") == "json_invalid" for item in raw):
            return problem_response(400, "The request body is not valid JSON")
        return invalid_request(field_errors(raw, read_only))

    return handle


def invalid_request(errors: Sequence[FieldError]) -> JSONResponse:
    """The 422 problem: a summary in `detail`, and every field error in `errors`."""
    summary = "; ".join(f"{e.field or e.location}: {e.message}" for e in errors)
    return problem_response(422, f"Invalid request: {summary}", errors=errors)


async def _database_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DatabaseError)
    operation = _operation(request)
    fields = {"operation": operation, "sqlstate": error.sqlstate}
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if error.failure in (Failure.UNAVAILABLE, Failure.TIMEOUT):
        # One line per failed request, with the traceback, as for every 5xx; a warning, as
        # an outage is not a bug here (the 503 tells clients to retry).
        log.warning(
            "database unavailable during %s: %s", operation, error, exc_info=error, extra=fields
        )
        return problem_response(503, "The database is unavailable; retry shortly", headers=retry)
    if error.failure is Failure.CONFLICT:
        # Still losing to concurrent transactions after the data layer's retries: contention,
        # not a bug, and a later attempt will succeed.
        log.warning(
            "transaction conflict on %s persisted through retries (SQLSTATE %s)",
            operation, error.sqlstate, extra=fields,
        )  # fmt: skip
        return problem_response(
            503, "The change kept conflicting with concurrent changes; retry shortly", headers=retry
        )
    if error.failure is Failure.INTEGRITY:
        log.warning("integrity error on %s: %s", operation, error, extra=fields)
        return problem_response(409, "The change conflicts with the stored data")
    # Any other database error is a bug here (bad SQL, a missing column): 500, with the
    # SQLSTATE that names it and the traceback.
    log.error("database error on %s: %s", operation, error, exc_info=error, extra=fields)
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


def install_problem_handlers(app: FastAPI, *, read_only_fields: frozenset[str]) -> None:
    """Every error becomes a problem. `read_only_fields`: the domains' server-set fields."""
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error(read_only_fields))
    app.add_exception_handler(DatabaseError, _database_error)
    app.add_exception_handler(Exception, unexpected_error)
