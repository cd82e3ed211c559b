"""Request id, access log and HTTP metrics: one pure ASGI middleware, the outermost.

Pure ASGI rather than `@app.middleware("http")`: there an exception skips the handlers, and
the body guard's 413/415 would never be seen. Being outermost, it sees every response, and it
answers an exception that escapes everything inside with the 500 problem itself, so that
response too carries the request id (Starlette's ServerErrorMiddleware, outside all user
middleware, would send it straight to the server).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable, Sequence

from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from todo_api.platform.http.problems import unexpected_error
from todo_api.platform.observability.logs import request_id_var
from todo_api.platform.observability.metrics import Metrics

REQUEST_ID_HEADER = b"x-request-id"
# Route label for paths no route matches: raw paths would make every scanner's probe a series.
UNMATCHED_ROUTE = "<unmatched>"
PROBE_ROUTES = frozenset({"/health", "/health/ready", "/metrics"})
# A client's id is kept when it is 1-128 visible ASCII characters: anything else could forge
# log lines, smuggle control characters or bloat every line of the request.
_ACCEPTABLE_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_CURSOR_KEPT = 8  # enough of a cursor to tell two apart in the log, not to replay one
_QUERY_KEPT = 256

access_log = logging.getLogger("todo_api.access")
log = logging.getLogger("todo_api.errors")


class Observability:
    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        metrics: Metrics | None,
        access_log: bool,
        access_log_probes: bool,
    ) -> None:
        self.app = app
        # The router's live list: routes added after the app is built are matched too.
        self.routes = routes
        self.metrics = metrics
        self.access_log = access_log
        self.access_log_probes = access_log_probes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope["headers"])
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0
        finished = False
        metrics = self.metrics
        if metrics is not None:
            metrics.in_progress.inc()

        def finish() -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            if status == 0:
                return  # the client left before any response: nothing was answered
            seconds = time.perf_counter() - started
            route = self._route_template(scope)
            if metrics is not None:
                metrics.observe_request(scope["method"], route, status, seconds)
            if self.access_log and (self.access_log_probes or route not in PROBE_ROUTES):
                self._log_access(scope, route, status, seconds)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Recorded before the last byte leaves: a client that reads the metrics right
                # after its response has been counted already.
                finish()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            if status != 0:
                # Too late for a problem document; the server drops the connection.
                log.error("error after the response started", exc_info=error)
                return
            # Logs the traceback (with the request id) and builds the 500 problem.
            response = await unexpected_error(Request(scope), error)
            await response(scope, receive, send_with_id)
        finally:
            finish()
            if metrics is not None:
                metrics.in_progress.dec()
            request_id_var.reset(token)

    def _route_template(self, scope: Scope) -> str:
        route = scope.get("route")
        template = getattr(route, "path_format", None)
        if isinstance(template, str):
            return template
        # Answered before routing (the body guard's 413/415) or by no route (404): match now.
        # Rare, so the cost of walking the routes is only paid on errors.
        return _match_template(self.routes, scope) or UNMATCHED_ROUTE

    @staticmethod
    def _log_access(scope: Scope, route: str, status: int, seconds: float) -> None:
        client = scope.get("client")
        fields: dict[str, object] = {
            "method": scope["method"],
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "client": client[0] if client else None,
        }
        query = scope.get("query_string", b"")
        if query:
            fields["query"] = _loggable_query(query)
        access_log.info(
            "%s %s %d %.1f ms", scope["method"], route, status, seconds * 1000, extra=fields
        )


def _match_template(routes: Iterable[BaseRoute], scope: Scope) -> str | None:
    for candidate in routes:
        # FastAPI wraps an included router in one route that holds the original router.
        included = getattr(getattr(candidate, "original_router", None), "routes", None)
        if included is not None:
            template = _match_template(included, scope)
        else:
            match, _ = candidate.matches(scope)
            template = getattr(candidate, "path_format", None) if match is not Match.NONE else None
        if isinstance(template, str):
            return template
    return None


def _request_id(headers: Sequence[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _ACCEPTABLE_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


def _loggable_query(query: bytes) -> str:
    """The query string with cursor values cut short (they encode a position in a user's
    data) and the whole bounded, so a hostile query cannot flood the log."""
    parts = []
    for part in query.decode("latin-1").split("&"):
        name, equals, value = part.partition("=")
        if name == "cursor" and len(value) > _CURSOR_KEPT:
            part = f"{name}{equals}{value[:_CURSOR_KEPT]}…"
        parts.append(part)
    text = "&".join(parts)
    return text if len(text) <= _QUERY_KEPT else text[:_QUERY_KEPT] + "…"
