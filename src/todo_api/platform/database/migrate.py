"""Apply and inspect Alembic migrations from async code.

Alembic is synchronous; it runs on an async connection through `run_sync` (Alembic's
"connection sharing" recipe), so the app and the CLI use the same engine code as requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from todo_api.platform.database.engine import create_engine, is_unavailable, wait_for_database
from todo_api.platform.database.errors import DatabaseUnavailable, describe_error
from todo_api.settings import Settings

log = logging.getLogger("todo_api.migrate")

# The app's migrations (todo_api/migrations), beside the tables they create.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Arbitrary but fixed: every replica must take the same PostgreSQL advisory lock.
MIGRATION_LOCK_KEY = 0x70D0_A71
LOCK_POLL_SECONDS = 0.2


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """What autogenerate compares: not the PostgreSQL-only trigram indexes (migration 0002),
    which the dialect-neutral metadata does not describe."""
    return not (type_ == "index" and name is not None and name.endswith("_trgm"))


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@functools.cache
def head_revision() -> str | None:
    # Reads every migration file: once per process, not on every readiness probe.
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine, *, batched: bool = True) -> tuple[str | None, str | None]:
    """Upgrade to head; returns (revision before, revision after). A no-op when up to date.

    On a direct PostgreSQL connection (`batched`) each migration commits on its own and may
    commit batches inside it (`batched_migration()`), so that no lock that blocks reads is
    held for the whole upgrade; a session-level advisory lock serialises replicas that start
    together: the second waits, then finds the schema current and does nothing. Through a
    transaction-mode pooler a session lock would stay behind on some server connection, so
    there (and on SQLite) the upgrade is one transaction under a transaction-scoped lock.
    """
    if engine.dialect.name != "postgresql" or not batched:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            return await _upgrade(connection, batched=False)
    async with engine.connect() as connection:
        await _lock(connection)
        try:
            return await _upgrade(connection, batched=True)
        finally:
            await connection.rollback()
            await connection.execute(
                sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
            await connection.commit()


async def _lock(connection: AsyncConnection) -> None:
    """Take the session-level migration lock by polling: a statement left waiting on it would
    hold a snapshot, and CREATE INDEX CONCURRENTLY in the lock holder's migration waits for
    every older snapshot to end (a deadlock)."""
    waiting = False
    while True:
        locked = await connection.scalar(
            sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )
        await connection.commit()
        if locked:
            return
        if not waiting:
            log.info("another process is migrating the database; waiting for it to finish")
            waiting = True
        await asyncio.sleep(LOCK_POLL_SECONDS)


async def _upgrade(connection: AsyncConnection, *, batched: bool) -> tuple[str | None, str | None]:
    before = await current_revision(connection)
    if before != head_revision():
        if batched:
            await connection.commit()  # Alembic begins (and commits) each migration itself
        await connection.run_sync(functools.partial(_upgrade_to_head, batched=batched))
    return before, await current_revision(connection)


def _upgrade_to_head(connection: Connection, *, batched: bool) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    config.attributes["batched"] = batched
    command.upgrade(config, "head")


def batched_migration() -> bool:
    """Inside a migration: whether it may commit between batches (see `upgrade`)."""
    from alembic import context

    return bool(context.config.attributes.get("batched"))


async def current_revision(connection: AsyncConnection) -> str | None:
    return await connection.run_sync(
        lambda sync: MigrationContext.configure(sync).get_current_revision()
    )


def direct_session(settings: Settings) -> bool:
    """Whether migrations get a connection of their own (not a transaction-pooled one)."""
    target = settings.database_direct
    return bool(settings.database_url_direct) or not settings.behind_transaction_pooler(target)


async def prepare_database(settings: Settings, engine: AsyncEngine) -> str | None:
    """Start-up: wait for the database (bounded retries), then apply pending migrations.

    Migrations use DATABASE_URL_DIRECT when set: advisory locks and DDL need a real session,
    not a transaction-pooled one. Returns the schema revision when it was checked.
    """
    deadline = settings.db_connect_deadline
    await wait_for_database(engine, settings.database, deadline_seconds=deadline)
    if not settings.auto_migrate:
        return None
    target = settings.database_direct
    # Without a separate direct URL the app's own engine will do (and an in-memory SQLite
    # database exists only inside that engine's one connection).
    direct = create_engine(settings, direct=True) if settings.database_url_direct else engine
    try:
        if direct is not engine:
            await wait_for_database(direct, target, deadline_seconds=deadline)
        before, after = await upgrade(direct, batched=direct_session(settings))
    except Exception as error:
        if is_unavailable(error):
            raise DatabaseUnavailable(
                f"cannot migrate {target.describe()}: {describe_error(error)}"
            ) from error
        raise
    finally:
        if direct is not engine:
            await direct.dispose()
    if before != after:
        log.info("migrated database schema from %s to %s", before or "empty", after)
    return after
