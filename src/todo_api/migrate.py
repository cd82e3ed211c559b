"""Apply and inspect Alembic migrations from async code.

Alembic is synchronous; it runs on an async connection through `run_sync` (Alembic's
"connection sharing" recipe), so the app and the CLI use the same engine code as requests.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary but fixed: every replica must take the same PostgreSQL advisory lock.
MIGRATION_LOCK_KEY = 0x70D0_A71


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """Upgrade to head; returns (revision before, revision after). A no-op when up to date.

    On PostgreSQL a transaction-scoped advisory lock serialises replicas that start together:
    the second waits, then finds the schema current and does nothing.
    """
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        before = await current_revision(connection)
        if before != head_revision():
            await connection.run_sync(_upgrade_to_head)
        return before, await current_revision(connection)


def _upgrade_to_head(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def current_revision(connection: AsyncConnection) -> str | None:
    return await connection.run_sync(
        lambda sync: MigrationContext.configure(sync).get_current_revision()
    )
