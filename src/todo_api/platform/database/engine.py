"""Engine, connection checks and the start-up round trip.

Nothing here connects at import time: `create_engine` only builds a pool, and the first
connection is made by `verify_database` (start-up) or a request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from todo_api.platform.database.database import Database
from todo_api.platform.database.errors import (
    UNAVAILABLE_SQLSTATES,
    DatabaseError,
    DatabaseUnavailable,
    Failure,
    describe_error,
    sqlstate_of,
)
from todo_api.platform.database.url import DatabaseTarget
from todo_api.settings import Settings

log = logging.getLogger("todo_api.database")


def create_engine(settings: Settings, *, direct: bool = False) -> AsyncEngine:
    """Build the engine for the app (or, with `direct`, for migrations)."""
    target = settings.database_direct if direct else settings.database
    if target.is_sqlite:
        return _sqlite_engine(target, settings)
    connect_args: dict[str, Any] = {
        "timeout": settings.db_connect_timeout,
        # Client-side bound on every statement; a server-side statement_timeout would be a
        # startup parameter, which PgBouncer rejects.
        "command_timeout": settings.db_statement_timeout,
        **target.connect_args,
    }
    connect_args["server_settings"] = {
        "application_name": "todo-api",
        # As PostgreSQL spells it: asyncpg's own "utf-8" differs from the server's "UTF8" in
        # PgBouncer's eyes, which then sends a SET before every transaction it hands over.
        "client_encoding": "UTF8",
        **target.connect_args.get("server_settings", {}),
    }
    if settings.behind_transaction_pooler(target):
        # PgBouncer in transaction mode hands each transaction to any server connection, where
        # a named prepared statement from another client may already exist. Unnamed statements
        # only: asyncpg's cache off (its prepare() is then unnamed) and SQLAlchemy's cache off.
        connect_args |= {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
    engine = create_async_engine(
        target.url,
        # Error messages and DEBUG logs show statements without their values: those are the
        # users' task titles and descriptions.
        hide_parameters=True,
        connect_args=connect_args,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        # Neon drops idle connections: recycle them before its limits (and see
        # _discard_closed_on_checkout).
        pool_recycle=settings.db_pool_recycle,
    )
    _discard_closed_on_checkout(engine)
    return engine


def open_database(
    settings: Settings, *, transaction_setup: Sequence[str], transaction_report: str | None = None
) -> Database:
    """The app's database (no connection is made until the first statement). SQLite:
    `transaction_setup` begins every write transaction, `transaction_report` ends it (its rows
    go to `Database.observe_commits`)."""
    engine = create_engine(settings)
    capacity = settings.db_pool_size + settings.db_max_overflow
    return Database(
        engine,
        capacity=capacity,
        queue_timeout=settings.db_pool_timeout,
        transaction_setup=transaction_setup,
        transaction_report=transaction_report,
    )


def _discard_closed_on_checkout(engine: AsyncEngine) -> None:
    """A pooled connection the server closed while it was idle never reaches a request.

    The check is free: asyncpg already knows when the server closed the socket (a terminated
    backend says so before it goes), so no ping (on asyncpg BEGIN, a query and ROLLBACK:
    three round trips) is sent before a request's statement. A connection that dies without
    a word is the retry policy's business (see Database._retrying).
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            # The pool discards it and checks out (or opens) another.
            raise exc.DisconnectionError("the server closed this connection while it was idle")


def _sqlite_engine(target: DatabaseTarget, settings: Settings) -> AsyncEngine:
    kwargs: dict[str, Any] = {
        "connect_args": {"timeout": settings.db_statement_timeout},
        "hide_parameters": True,  # see create_engine
    }
    if target.is_memory:
        # One shared connection, or every connection would see its own empty database.
        kwargs["poolclass"] = StaticPool
    engine = create_async_engine(target.url, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")  # off by default; ON DELETE CASCADE needs it
        if not target.is_memory:
            cursor.execute("PRAGMA journal_mode = WAL")  # readers do not block the writer
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable in WAL mode across crashes
        cursor.close()

    return engine


@dataclass(frozen=True)
class Probe:
    latency_ms: float
    server_version: str


async def verify_database(engine: AsyncEngine, target: DatabaseTarget) -> Probe:
    """One real round trip; DatabaseUnavailable with host, port, database and the reason."""
    started = time.perf_counter()
    try:
        async with engine.connect() as connection:
            version = await connection.scalar(sa.text(_version_query(target)))
    except Exception as error:  # every failure to reach the database means the same to the caller
        raise DatabaseUnavailable(
            f"cannot connect to {target.describe()}: {describe_error(error)}"
        ) from error
    return Probe(
        latency_ms=(time.perf_counter() - started) * 1000, server_version=str(version or "")
    )


async def wait_for_database(
    engine: AsyncEngine, target: DatabaseTarget, *, deadline_seconds: float
) -> Probe:
    """Connect, retrying with exponential backoff and full jitter until the deadline.

    A suspended Neon compute takes a moment to wake and a database restarting refuses briefly;
    a wrong password or database name will not fix itself, so those fail at once.
    """
    started = time.monotonic()
    delay = 0.25
    for attempt in itertools.count(1):
        try:
            return await verify_database(engine, target)
        except DatabaseUnavailable as error:
            elapsed = time.monotonic() - started
            remaining = deadline_seconds - elapsed
            if remaining <= 0 or _is_permanent(error):
                raise DatabaseUnavailable(
                    f"{error} (gave up after {attempt} attempt{'s' if attempt > 1 else ''} "
                    f"in {elapsed:.1f} s)"
                ) from error.__cause__
            pause = min(remaining, random.uniform(delay / 2, delay))
            log.warning("database attempt %d failed: %s; retrying in %.2f s", attempt, error, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")  # pragma: no cover


def _is_permanent(error: DatabaseUnavailable) -> bool:
    # SQLSTATE class 28: authentication; 3D000: no such database. Both need a human.
    sqlstate = sqlstate_of(error.__cause__) or ""
    return sqlstate.startswith("28") or sqlstate == "3D000"


def _version_query(target: DatabaseTarget) -> str:
    return "SELECT sqlite_version()" if target.is_sqlite else "SHOW server_version"


def is_unavailable(error: BaseException) -> bool:
    """True for errors (of SQLAlchemy's execution: start-up, migrations) that mean "the
    database is not reachable right now"."""
    if isinstance(error, DatabaseError):
        return error.failure in (Failure.UNAVAILABLE, Failure.TIMEOUT)
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        # asyncpg raises the server's refusals during a restart (57P03 "the database system is
        # starting up", 57P01 terminated) and a handshake cut short (class 08) as plain
        # PostgresErrors, which SQLAlchemy wraps as a bare DBAPIError.
        sqlstate = sqlstate_of(error) or ""
        if sqlstate.startswith("08") or sqlstate in UNAVAILABLE_SQLSTATES:
            return True
    return isinstance(
        error,
        exc.OperationalError
        | exc.InterfaceError
        | exc.TimeoutError  # pool exhausted for db_pool_timeout seconds
        | DatabaseUnavailable
        | OSError
        | TimeoutError,
    )


async def connect_direct(settings: Settings, *, application_name: str) -> asyncpg.Connection:
    """A connection of its own (no pool, never a transaction-mode pooler: DATABASE_URL_DIRECT
    when set), for session features such as LISTEN. PostgreSQL only."""
    target = settings.database_direct
    url = target.url
    connect_args: dict[str, Any] = {"timeout": settings.db_connect_timeout, **target.connect_args}
    connect_args["server_settings"] = {
        **target.connect_args.get("server_settings", {}),
        "application_name": application_name,
    }
    connection: asyncpg.Connection = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
        **connect_args,
    )
    return connection
