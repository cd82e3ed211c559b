"""One logging setup for the app, uvicorn and SQLAlchemy."""

from __future__ import annotations

import logging

from todo_api.settings import Settings


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    # uvicorn's loggers propagate to the root handler configured above.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Alembic narrates every context it opens; the app logs the one line that matters.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
