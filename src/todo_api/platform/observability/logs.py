"""One logging setup for the app, uvicorn and SQLAlchemy, and the request id on every line.

Production (`LOG_FORMAT=json`, the default when APP_ENV=production) writes one JSON object per
line for a log shipper; development writes readable lines. Either way every record logged
while a request is handled carries that request's id: the middleware sets a context variable
and a filter on our handler copies it onto each record, whichever logger emitted it.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from todo_api.settings import Settings

# Set by the observability middleware for the duration of one request (each request runs in
# its own task, so concurrent requests never see each other's id).
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has: anything else on a record came from `extra=` and is a field
# (but uvicorn's `color_message`, the message again with terminal colour codes).
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "request_tag",
    "taskName",
    "color_message",
}


def current_request_id() -> str | None:
    return request_id_var.get()


class RequestIdFilter(logging.Filter):
    """Copies the current request id (or None outside a request) onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extras, traceback."""

    def __init__(self) -> None:
        super().__init__()
        # One encoder for every line: json.dumps with options builds a new one per call.
        # default=str: an unexpected extra (an exception, a UUID) must not lose the line.
        self._encode = json.JSONEncoder(default=str, ensure_ascii=False).encode
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            # Several workers share one stdout: the pid tells their lines apart.
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self._encode(entry)

    def _time(self, created: float) -> str:
        """RFC 3339 UTC with milliseconds; the part up to the second is reused within it
        (formatting a datetime costs more than the rest of an access line)."""
        second = int(created)
        if second != self._second:
            stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second, self._second_text = second, stamp
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"


class ConsoleFormatter(logging.Formatter):
    """`time LEVEL logger [request id]: message`, then the traceback if any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(request_tag)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [{request_id}]" if request_id else ""
        return super().format(record)


def configure_logging(settings: Settings, *, stream: IO[str] | None = None) -> logging.Handler:
    """Install the one root handler (replacing any) and align the libraries' loggers.

    Returns the handler (tests read what it wrote). Called by the CLI in the main process and
    again in each worker that uvicorn spawns (see `cli.serve_app`).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.logs_as_json else ConsoleFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)

    # uvicorn's loggers propagate to the root handler, so they share the format and request id.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Our middleware writes the access line (route template, request id, duration); uvicorn's
    # would repeat it with the raw path and query string (cursors, user ids).
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True

    debug = settings.log_level == "DEBUG"
    # Statements are logged in one place for every database, at DEBUG, without their values
    # (logger todo_api.sql, see Database._observe); SQLAlchemy's own statement log would
    # repeat the SQLite ones and, at its DEBUG, print result rows (users' data). Connection
    # checkouts (pool) help at DEBUG.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    logging.getLogger("sqlalchemy.pool").setLevel(logging.DEBUG if debug else logging.WARNING)
    # aiosqlite narrates every call it forwards to its thread at DEBUG.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    # Alembic narrates every context it opens; the app logs the one line that matters.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    return handler
