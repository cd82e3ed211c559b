"""Request dependencies the platform provides: the settings and the database.

Dependencies that do no I/O are `async def` all the same: FastAPI runs a plain `def`
dependency in a worker thread, a hop on every request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from todo_api.platform.database.database import Database
from todo_api.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    # The database, not a session: each data-access function checks a connection out for
    # just the statements it runs, and never holds one across a request's other awaits.
    database: Database = request.app.state.database
    return database


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
