"""Browsers on other origins (CORS), by Starlette's CORSMiddleware.

What a frontend needs is fixed here: the methods of the API, the request headers it reads
(tokens, conditional requests, idempotency keys, request ids, the change feed's Last-Event-ID)
and the response headers JavaScript must be able to read (ETag, Location, Retry-After,
X-Request-ID, Idempotent-Replayed). Which origins may call is configuration (CORS_ORIGINS).

The one thing added to the library: a preflight it refuses gets a problem document naming what
was refused, instead of a plain-text 400 (every error of this API is a problem).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from todo_api.platform.http.problems import problem_response

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
    "X-Request-ID",
    "Last-Event-ID",
)
EXPOSED_HEADERS = ("ETag", "Location", "Retry-After", "X-Request-ID", "Idempotent-Replayed")


class Cors:
    def __init__(
        self,
        app: ASGIApp,
        *,
        origins: Sequence[str],
        allow_credentials: bool,
        max_age: int,
    ) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=METHODS,
            allow_headers=REQUEST_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            allow_credentials=allow_credentials,
            max_age=max_age,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        preflight = (
            scope["method"] == "OPTIONS"
            and "origin" in headers
            and "access-control-request-method" in headers
        )
        if not preflight:
            await self.cors(scope, receive, send)
            return
        response = self.cors.preflight_response(request_headers=headers)
        if response.status_code < 400:
            await response(scope, receive, send)
            return
        refused = problem_response(400, self._refusal(headers))
        # No Access-Control-Allow-Origin: the browser reports the refusal to the page.
        refused.headers["Vary"] = "Origin"
        await refused(scope, receive, send)

    def _refusal(self, headers: Headers) -> str:
        origin = headers["origin"]
        if not self.cors.is_allowed_origin(origin=origin):
            return f"CORS preflight refused: origin {origin[:200]!r} is not in CORS_ORIGINS"
        method = headers["access-control-request-method"]
        if method not in METHODS:
            allowed = ", ".join(METHODS)
            return f"CORS preflight refused: method {method[:20]!r} is not one of {allowed}"
        return (
            f"CORS preflight refused: a requested header is not one of {', '.join(REQUEST_HEADERS)}"
        )
