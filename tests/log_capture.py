"""The app's own logging setup, writing to a buffer, undone afterwards.

`configure_logging` replaces the root handler and retunes library loggers for the whole
process; the capture restores all of it, so other tests (and pytest's own capture) are as
they were.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from todo_api.platform.observability.logs import configure_logging
from todo_api.settings import Settings

_TUNED_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "sqlalchemy",
    "sqlalchemy.engine",
    "sqlalchemy.pool",
    "aiosqlite",
    "alembic",
    "httpx",
    "httpcore",
)


@dataclass
class LogCapture:
    stream: io.StringIO = field(default_factory=io.StringIO)

    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        """Every line parsed as JSON (fails on any line that is not)."""
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]

    def of_request(self, request_id: str) -> list[dict[str, Any]]:
        return [record for record in self.records() if record.get("request_id") == request_id]

    def access(self, request_id: str) -> dict[str, Any]:
        """The one access line of this request."""
        lines = [r for r in self.of_request(request_id) if r["logger"] == "todo_api.access"]
        assert len(lines) == 1, self.text()
        return lines[0]


@contextmanager
def captured_logs(settings: Settings, **overrides: Any) -> Iterator[LogCapture]:
    """Logging configured as the CLI does (JSON lines unless overridden) into a buffer."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {
        name: (logger.level, logger.propagate, logger.disabled, logger.handlers[:])
        for name in _TUNED_LOGGERS
        for logger in [logging.getLogger(name)]
    }
    capture = LogCapture()
    configure_logging(
        settings.model_copy(update={"log_format": "json", **overrides}), stream=capture.stream
    )
    # The test's HTTP client logs each URL it requests: that is not the server's log.
    for client_logger in ("httpx", "httpcore"):
        logging.getLogger(client_logger).setLevel(logging.WARNING)
    try:
        yield capture
    finally:
        root.handlers[:], level = saved_root
        root.setLevel(level)
        for name, (level, propagate, disabled, handlers) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled
            logger.handlers[:] = handlers
