"""Shared fixtures: every API test runs once on SQLite and once on a real PostgreSQL.

PostgreSQL tests use TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test) only
to create a database of their own, which is dropped at the end. In CI (CI=true) an unreachable
PostgreSQL fails the run; elsewhere those tests are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pgbouncer import PgBouncer, find_pgbouncer
from support import (
    IN_CI,
    running,
    scratch_postgresql_database,
    settings_for,
)
from todo_api.platform.database import migrate
from todo_api.platform.database.engine import create_engine
from todo_api.settings import Settings

# `pgbouncer`: the same PostgreSQL database behind a real PgBouncer in transaction mode with
# client TLS, reached with Neon's URL parameters, as the API meets Neon's `-pooler` endpoints.
BACKENDS = ("sqlite", "postgresql", "pgbouncer")
BACKEND_SETTINGS: dict[str, dict[str, Any]] = {"pgbouncer": {"db_pool_mode": "transaction"}}


@pytest.fixture(scope="session")
def postgresql_server_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session (dropped afterwards)."""
    with scratch_postgresql_database("todo_test") as url:
        asyncio.run(_migrate(url))
        yield url


@pytest.fixture(scope="session")
def pgbouncer(postgresql_server_url: str) -> Iterator[PgBouncer]:
    executable = find_pgbouncer()
    if executable is None:
        message = "pgbouncer is not installed (apt-get install -y pgbouncer)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = make_url(postgresql_server_url)
    bouncer = PgBouncer(server.host or "127.0.0.1", server.port or 5432)
    bouncer.start(executable)
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="session")
def pgbouncer_server_url(postgresql_server_url: str, pgbouncer: PgBouncer) -> str:
    """The URL as Neon hands it out (TLS required, channel binding asked for)."""
    pooled = make_url(postgresql_server_url).set(
        host="127.0.0.1",
        port=pgbouncer.port,
        query={"sslmode": "require", "channel_binding": "require"},
    )
    return pooled.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def sqlite_server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'todo.db'}"
    asyncio.run(_migrate(url))
    return url


async def _migrate(url: str) -> None:
    engine = create_engine(settings_for(url))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The migrated database of this backend, emptied before the test."""
    url: str = request.getfixturevalue(f"{backend}_server_url")
    # Straight through the drivers, not an engine: this runs before each of ~3,500 tests.
    # PgBouncer's database is the PostgreSQL one behind it.
    _empty(url if backend == "sqlite" else request.getfixturevalue("postgresql_server_url"))
    return url


EMPTY = ("DELETE FROM tasks", "DELETE FROM users")  # users: every other row is a user's


def _empty(url: str) -> None:
    if url.startswith("sqlite"):
        connection = sqlite3.connect(make_url(url).database or "")
        try:
            connection.execute("PRAGMA foreign_keys = ON")
            with connection:  # one transaction, committed
                for statement in EMPTY:
                    connection.execute(statement)
        finally:
            connection.close()
    else:
        asyncio.run(_empty_postgresql(make_url(url).set(drivername="postgresql")))


async def _empty_postgresql(url: URL) -> None:
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        async with connection.transaction():
            for statement in EMPTY:
                await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def settings(database_url: str, backend: str) -> Settings:
    return settings_for(database_url, **BACKEND_SETTINGS.get(backend, {}))


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(settings) as http:
        yield http


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A separate engine for looking at the database directly (what is really stored)."""
    db = create_engine(settings)
    yield db
    await db.dispose()


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run through PgBouncer only the modules marked `through_pooler`: together they cover
    every endpoint, and running the whole hostile-input corpus a third time adds nothing.
    Tests marked `request_layer` (input refused before any SQL runs) run on SQLite only."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        pooled = backend == "pgbouncer" and item.get_closest_marker("through_pooler") is None
        layered = backend == "postgresql" and item.get_closest_marker("request_layer")
        if pooled or layered:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found
