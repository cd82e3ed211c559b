"""Engine, connection checks and the start-up round trip.

Nothing here connects at import time: `create_engine` only builds a pool, and the first
connection is made by `verify_database` (start-up) or a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import weakref
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from todo_api.database_url import DatabaseTarget
from todo_api.settings import Settings

log = logging.getLogger("todo_api.database")


class DatabaseUnavailable(Exception):
    """The database could not be reached; the message says where and why, without secrets."""


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
        "server_settings": {"application_name": "todo-api"},
        **target.connect_args,
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
        # Neon drops idle connections: recycle them before its limits, and ping those that sat
        # idle before use (see _ping_when_idle).
        pool_recycle=settings.db_pool_recycle,
    )
    _ping_when_idle(engine, settings.db_ping_after_idle)
    _queues[engine.sync_engine] = ConnectionQueue(
        settings.db_pool_size + settings.db_max_overflow, settings.db_pool_timeout
    )
    return engine


class ConnectionQueue:
    """First come, first served turns on the pool's connections.

    SQLAlchemy's async pool waits on an asyncio.Queue, which is not fair: a request that
    arrives while a connection is being handed to a waiter can take it, and the woken waiter
    goes back to the end of the line. Under sustained load a few requests waited seconds (3 s
    seen with the default pool of 20 and 32 clients) while the rest went straight through.
    asyncio.Semaphore hands a released slot to its longest waiter, so requests queue here, in
    order, and the pool itself never has waiters. Sized to the pool's capacity (size +
    overflow) and timed out like the pool (DB_POOL_TIMEOUT, then a 503).
    """

    def __init__(self, capacity: int, timeout: float) -> None:
        self._slots = asyncio.Semaphore(capacity)
        self._capacity = capacity
        self._timeout = timeout

    async def __aenter__(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise exc.TimeoutError(
                f"no database connection came free within {self._timeout:g} s "
                f"(pool capacity {self._capacity}: DB_POOL_SIZE + DB_MAX_OVERFLOW)"
            ) from None

    async def __aexit__(self, *_exc_info: object) -> None:
        self._slots.release()


_queues: weakref.WeakKeyDictionary[sa.Engine, ConnectionQueue] = weakref.WeakKeyDictionary()
_NO_QUEUE = contextlib.nullcontext()


def connection_turn(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
    """`async with` it around each use of a pooled connection (SQLite: no queue, a no-op)."""
    return _queues.get(engine.sync_engine, _NO_QUEUE)


def _ping_when_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """Pre-ping on checkout, but only connections idle for more than `idle_seconds`.

    SQLAlchemy's pool_pre_ping pings every checkout, and on asyncpg a ping is BEGIN, a query and
    ROLLBACK: three round trips before every request. Connections die while idle (a suspended
    Neon compute, a restarted pooler); one that dies while busy fails its next statement, which
    the data layer retries once on a fresh connection.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # Free check first: asyncpg already knows when the server closed the socket (a
        # terminated backend says so before it goes). Catching that here, before a statement is
        # sent, keeps writes out of the "did it commit?" uncertainty of a connection lost mid-way.
        if dbapi_connection.driver_connection.is_closed():
            raise exc.DisconnectionError("the server closed this connection while it was idle")
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # any failure: this connection is unusable
            # The pool discards it and checks out (or opens) another.
            raise exc.DisconnectionError(describe_error(error)) from error


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


def sqlstate_of(error: BaseException | None) -> str | None:
    """The SQLSTATE of a driver error, or of the one a SQLAlchemy error wraps (None: none)."""
    driver_error = error.orig if isinstance(error, exc.DBAPIError) else error
    code = getattr(driver_error, "sqlstate", None) or getattr(driver_error, "pgcode", None)
    return str(code) if code else None


def _is_permanent(error: DatabaseUnavailable) -> bool:
    # SQLSTATE class 28: authentication; 3D000: no such database. Both need a human.
    sqlstate = sqlstate_of(error.__cause__) or ""
    return sqlstate.startswith("28") or sqlstate == "3D000"


def _version_query(target: DatabaseTarget) -> str:
    return "SELECT sqlite_version()" if target.is_sqlite else "SHOW server_version"


def describe_error(error: BaseException) -> str:
    """The driver's own reason, without SQLAlchemy's statement and parameter dump."""
    if isinstance(error, exc.DBAPIError) and error.orig is not None:
        error = error.orig
    reason = str(error).strip() or ("timed out" if isinstance(error, TimeoutError) else "no detail")
    return f"{type(error).__name__}: {reason}"


# admin_shutdown, crash_shutdown, cannot_connect_now
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
# serialization_failure, deadlock_detected: the server aborted the transaction and kept nothing
# of it; running it again is safe and usually succeeds.
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})


def is_unavailable(error: BaseException) -> bool:
    """True for errors that mean "the database is not reachable right now" (answer 503)."""
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
