"""Alembic environment.

The app and `todo-api db upgrade` pass an open connection in `config.attributes["connection"]`
(see todo_api.migrate); the plain `alembic` command (for writing new revisions) connects itself
using the same settings as the app.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from todo_api import tables  # noqa: F401  (registers the tables on the metadata)
from todo_api.platform.database import migrate
from todo_api.platform.database.engine import create_engine
from todo_api.settings import load_settings

target_metadata = SQLModel.metadata


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_object=migrate.include_object,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        # Each migration commits on its own when the caller left the transactions to Alembic
        # (migrate.upgrade, batched), so a long data migration need not hold its DDL locks.
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    engine = create_engine(load_settings(), direct=True)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_with)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=load_settings().database.url, target_metadata=target_metadata, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()
elif (shared := context.config.attributes.get("connection")) is not None:
    run_with(shared)
else:
    asyncio.run(run_standalone())
