"""How statements reach each kind of database: one executor per kind, chosen at start-up.

- PostgreSQL: every statement runs straight on asyncpg, on a connection from SQLAlchemy's
  pool (checkout checks, recycling, pool metrics), as SQL compiled once by SQLAlchemy
  (`statements`). Single statements run in autocommit (no BEGIN/COMMIT round trips);
  transactions in asyncpg's `transaction()` on the same connection.
- SQLite: SQLAlchemy's async connection (aiosqlite), which needs no more speed than it has.

Both translate their driver's failures into `DatabaseError` and report every statement to
one observer (DEBUG log, statement metrics).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from todo_api.platform.database.errors import (
    UNAVAILABLE_SQLSTATES,
    DatabaseError,
    Failure,
    describe_error,
    failure_of_sqlstate,
)
from todo_api.platform.database.statements import Compiled, StatementCache

T = TypeVar("T")
Rows = Sequence[Sequence[Any]]
# Called after every statement, failed ones included: (SQL, seconds).
StatementObserver = Callable[[str, float], None]


class Session(Protocol):
    """The statements of one transaction."""

    async def rows(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> Rows: ...


class Executor(Protocol):
    async def rows(self, statement: sa.Executable, parameters: Mapping[str, Any]) -> Rows:
        """One statement in autocommit on a connection of its own; its rows."""
        ...

    async def transaction(
        self, work: Callable[[Session], Awaitable[T]], *, snapshot: bool = False
    ) -> T:
        """`work`'s statements in one transaction, committed before this returns;
        `snapshot`: a read-only one whose statements all see the same committed state."""
        ...


async def _connect(engine: AsyncEngine) -> AsyncConnection:
    try:
        return await engine.connect()
    except exc.TimeoutError as error:  # the pool itself timed out (our queue should first)
        raise DatabaseError(str(error), failure=Failure.UNAVAILABLE, not_executed=True) from error
    except (exc.DBAPIError, OSError, TimeoutError) as error:
        original = getattr(error, "orig", None) or error
        sqlstate = getattr(original, "sqlstate", None)
        # Not retried here: the pool already tried a new connection, and waiting for another
        # connect timeout would only delay the 503 of an outage.
        raise DatabaseError(
            f"cannot connect: {describe_error(error)}",
            failure=Failure.UNAVAILABLE,
            sqlstate=sqlstate,
            not_executed=True,
        ) from error


@asynccontextmanager
async def _pooled(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection that goes back to the pool only if nothing cast doubt on it."""
    connection = await _connect(engine)
    vouched = False
    try:
        yield connection
        vouched = True
    except DatabaseError as error:
        vouched = not error.connection_lost
        raise
    finally:
        # Anything else (a cancelled request, a bug mid-transaction) leaves the connection in
        # a state nobody checked: the pool opens a new one instead.
        if not vouched:
            await connection.invalidate()
        await connection.close()


# --- PostgreSQL on asyncpg ----------------------------------------------------------------------

# How long to wait, after a statement timed out, for the server to confirm its cancellation.
CANCEL_WAIT_SECONDS = 5.0


class PostgresExecutor:
    def __init__(self, engine: AsyncEngine, observe: StatementObserver) -> None:
        self._engine = engine
        self._observe = observe
        self.statements = StatementCache(engine.dialect)

    async def rows(self, statement: sa.Executable, parameters: Mapping[str, Any]) -> Rows:
        # The hot path of every request, written out (the same steps as `transaction` takes
        # through _pooled and _fetch): each context manager and coroutine frame less is a
        # microsecond or two.
        compiled = self.statements[statement]
        arguments = compiled.arguments(parameters)
        connection = await _connect(self._engine)
        vouched = False
        try:
            driver = await _driver(connection)
            started = time.perf_counter()
            try:
                records = await driver.fetch(compiled.sql, *arguments)
            except Exception as error:
                raise await _translated(error, driver) from error
            finally:
                self._observe(compiled.sql, time.perf_counter() - started)
            vouched = True
        except DatabaseError as error:
            vouched = not error.connection_lost
            raise
        finally:
            if not vouched:
                await connection.invalidate()
            await connection.close()
        return [compiled.row(record) for record in records]

    async def transaction(
        self, work: Callable[[Session], Awaitable[T]], *, snapshot: bool = False
    ) -> T:
        async with _pooled(self._engine) as connection:
            driver = await _driver(connection)
            session = _PostgresSession(self, driver)
            transaction = (
                driver.transaction(isolation="repeatable_read", readonly=True)
                if snapshot
                else driver.transaction()
            )
            try:
                await self._call(driver, "BEGIN", transaction.start())
                try:
                    result = await work(session)
                except BaseException:
                    if not driver.is_closed():
                        await self._roll_back(driver, transaction)
                    raise
            except DatabaseError as error:
                if error.connection_lost and not error.not_executed:
                    # Lost before COMMIT was sent: the server rolled the transaction back, so
                    # nothing of it took effect and it may run again, writes included.
                    raise DatabaseError(
                        f"{error.reason} (before COMMIT: nothing was kept)",
                        failure=error.failure,
                        sqlstate=error.sqlstate,
                        connection_lost=True,
                        not_executed=True,
                    ) from error
                raise
            await self._call(driver, "COMMIT", transaction.commit())
            return result

    async def _roll_back(
        self, driver: asyncpg.Connection, transaction: asyncpg.transaction.Transaction
    ) -> None:
        try:
            await self._call(driver, "ROLLBACK", transaction.rollback())
        except DatabaseError as error:
            # Nothing was committed (no COMMIT was sent), but the connection is in a state
            # nobody can vouch for: it leaves the pool, and the work may run again.
            raise DatabaseError(
                f"rollback failed: {error}",
                failure=Failure.UNAVAILABLE,
                sqlstate=error.sqlstate,
                connection_lost=True,
                not_executed=True,
            ) from error

    async def _fetch(
        self, driver: asyncpg.Connection, compiled: Compiled, parameters: Mapping[str, Any]
    ) -> Rows:
        records = await self._call(
            driver, compiled.sql, driver.fetch(compiled.sql, *compiled.arguments(parameters))
        )
        return [compiled.row(record) for record in records]

    async def _call(self, driver: asyncpg.Connection, sql: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except Exception as error:
            raise await _translated(error, driver) from error
        finally:
            self._observe(sql, time.perf_counter() - started)


class _PostgresSession:
    def __init__(self, executor: PostgresExecutor, driver: asyncpg.Connection) -> None:
        self._executor = executor
        self._driver = driver

    async def rows(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> Rows:
        compiled = self._executor.statements[statement]
        return await self._executor._fetch(self._driver, compiled, parameters or {})


async def _driver(connection: AsyncConnection) -> asyncpg.Connection:
    # The checked-out connection, through public attributes: `get_raw_connection()` would
    # cost one more greenlet hop (about 5 µs) for the same object.
    pooled = connection.sync_connection.connection  # type: ignore[union-attr]
    driver: asyncpg.Connection = pooled.driver_connection  # type: ignore[assignment]
    return driver


async def _translated(error: Exception, driver: asyncpg.Connection) -> DatabaseError:
    """What an asyncpg failure means: its kind, and what is known about the connection and
    about whether the statement took effect."""
    if isinstance(error, TimeoutError):  # DB_STATEMENT_TIMEOUT (asyncpg's command_timeout)
        await _cancelled(driver)
        # A cancelled statement's connection is not vouched for: it leaves the pool.
        return DatabaseError(
            "the statement was cancelled after DB_STATEMENT_TIMEOUT",
            failure=Failure.TIMEOUT,
            connection_lost=True,
        )
    if isinstance(error, asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError):
        # Raised by asyncpg before it sends anything: the connection is closed, or its
        # protocol is in a state that forbids a new statement (e.g. "cannot switch to state
        # 11; another operation (2) is in progress" after the server went away mid-answer).
        return DatabaseError(
            describe_error(error),
            failure=Failure.UNAVAILABLE,
            connection_lost=True,
            not_executed=True,
        )
    if isinstance(error, asyncpg.PostgresError):
        answer = _answer(error)
        sqlstate = (answer or error).sqlstate
        lost = (
            driver.is_closed()
            or answer is None
            or answer.severity in ("FATAL", "PANIC")
            or sqlstate.startswith("08")
            or sqlstate in UNAVAILABLE_SQLSTATES
        )
        return DatabaseError(
            describe_error(answer or error),
            failure=Failure.UNAVAILABLE if lost else failure_of_sqlstate(sqlstate),
            sqlstate=sqlstate,
            connection_lost=lost,
            not_executed=answer is not None and _proves_not_executed(answer),
        )
    # OSError and anything else: the connection's state is unknown, and so is the outcome.
    return DatabaseError(
        describe_error(error),
        failure=Failure.UNAVAILABLE if isinstance(error, OSError) else Failure.BUG,
        connection_lost=True,
    )


def _answer(error: BaseException | None) -> asyncpg.PostgresError | None:
    """The error the other end (PostgreSQL, or PgBouncer in front of it) sent, if any: asyncpg
    raises a connection closed with a FATAL error (57P01 "terminating connection due to
    administrator command") as a client-side 08003 whose cause is that error. Errors asyncpg
    makes up itself have no severity."""
    while error is not None:
        if isinstance(error, asyncpg.PostgresError) and error.severity is not None:
            return error
        error = error.__cause__
    return None


# PgBouncer's answer when the server connection it was about to hand over died while it
# synchronised the session's parameters (`varcache_apply failed`): it holds the client's query
# back until that is done, so the query never reached PostgreSQL. Seen in tests when a
# backend was terminated just before use.
_PGBOUNCER_NOT_FORWARDED = ("invalid server parameter",)


def _proves_not_executed(answer: asyncpg.PostgresError) -> bool:
    """Whether an error answer proves that the statement (or its transaction) kept nothing.

    An error from PostgreSQL itself (it always names its source file and function) means the
    statement failed as a whole, or never ran. An error made up by PgBouncer proves it only
    when PgBouncer cannot have forwarded the statement: "server conn crashed?" may come after
    PostgreSQL committed it.
    """
    if answer.server_source_function is not None:
        return True
    return str(answer).startswith(_PGBOUNCER_NOT_FORWARDED)


async def _cancelled(driver: asyncpg.Connection) -> None:
    """Wait until the statement that just timed out is over on the server.

    asyncpg gives up waiting at once and sends the server a cancel request on the side; the
    statement may still be running (waiting for a row lock, say). Answering the client before
    it is over would let a write that was reported as failed go through afterwards (seen
    through PgBouncer, where the cancel takes an extra hop). asyncpg holds the connection's
    next statement until the cancellation is done, so one trivial statement waits for it.
    """
    # Any failure will do as well: the connection leaves the pool either way.
    with contextlib.suppress(Exception):
        await driver.execute("SELECT 1", timeout=CANCEL_WAIT_SECONDS)


# --- SQLite on SQLAlchemy ------------------------------------------------------------------------

# SQLite's primary result codes that mean "not now" rather than "wrong": busy or locked by
# another writer, I/O error, disk full, cannot open the file, read-only file, out of memory.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 10, 13, 14, 8, 7})
_SQLITE_CONSTRAINT = 19


class SqliteExecutor:
    """`setup`: statements that begin every write transaction (state that a transaction
    keeps for itself: SQLite runs one writer at a time). A single write statement then runs
    in a transaction of its own too. `report`: a query run last in every write transaction,
    whose rows go to each of `committed` once the transaction has committed."""

    def __init__(
        self,
        engine: AsyncEngine,
        observe: StatementObserver,
        setup: Sequence[str] = (),
        report: str | None = None,
    ) -> None:
        self._engine = engine
        self._observe = observe
        self._setup = tuple(sa.text(statement) for statement in setup)
        self._report = sa.text(report) if report is not None else None
        self.committed: list[Callable[[Rows], None]] = []
        # SQLAlchemy caches compiled forms itself; nothing to keep here.

    async def rows(self, statement: sa.Executable, parameters: Mapping[str, Any]) -> Rows:
        if self._setup and getattr(statement, "is_dml", False):
            return await self.transaction(lambda session: session.rows(statement, parameters))
        async with _pooled(self._engine) as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            return await _SqliteSession(connection, self._observe).rows(statement, parameters)

    async def transaction(
        self, work: Callable[[Session], Awaitable[T]], *, snapshot: bool = False
    ) -> T:
        async with _pooled(self._engine) as connection:
            session = _SqliteSession(connection, self._observe)
            try:
                # Take the write lock first: Python's sqlite3 would begin only at the first
                # write, so a transaction's reads (a quota count, a list's last position)
                # could be stale by the time it writes. Writers queue here (busy timeout).
                # A snapshot only reads: a deferred BEGIN, whose reads share one snapshot.
                await connection.exec_driver_sql("BEGIN" if snapshot else "BEGIN IMMEDIATE")
                if not snapshot:
                    for statement in self._setup:
                        await session.rows(statement)
                result = await work(session)
                report = (
                    await session.rows(self._report)
                    if self._report is not None and not snapshot
                    else []
                )
                await connection.commit()
            except exc.SQLAlchemyError as error:
                raise _sqlite_error(error) from error
            for observer in self.committed:
                observer(report)
            return result


class _SqliteSession:
    def __init__(self, connection: AsyncConnection, observe: StatementObserver) -> None:
        self._connection = connection
        self._observe = observe

    async def rows(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> Rows:
        started = time.perf_counter()
        try:
            result = await self._connection.execute(statement, parameters or {})
            return result.all() if result.returns_rows else []
        except exc.SQLAlchemyError as error:
            raise _sqlite_error(error) from error
        finally:
            self._observe(str(statement), time.perf_counter() - started)


def _sqlite_error(error: exc.SQLAlchemyError) -> DatabaseError:
    original = getattr(error, "orig", None)
    code = getattr(original, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in _SQLITE_UNAVAILABLE or (
        primary is None and isinstance(original, sqlite3.OperationalError)
    ):
        failure = Failure.UNAVAILABLE
    elif primary == _SQLITE_CONSTRAINT or isinstance(error, exc.IntegrityError):
        failure = Failure.INTEGRITY
    else:
        # SQLITE_ERROR and the rest: bad SQL, a missing table or column. A bug, not an outage.
        failure = Failure.BUG
    name = getattr(original, "sqlite_errorname", None)
    return DatabaseError(
        describe_error(error),
        failure=failure,
        sqlstate=name,
        # SQLite's "connection" is a file handle: a failed statement leaves it usable, and a
        # statement that failed kept nothing (each runs in its own transaction or ours).
        not_executed=True,
    )
