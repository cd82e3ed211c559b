"""The app's database: the engine (pool), a fair queue for its connections, the executor for
its kind, and the one retry policy. Built at start-up (`open_database`) and held on the app.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from todo_api.platform.database.errors import DatabaseError, Failure
from todo_api.platform.database.executors import (
    Executor,
    PostgresExecutor,
    Rows,
    Session,
    SqliteExecutor,
    StatementObserver,
)

T = TypeVar("T")
log = logging.getLogger("todo_api.database")
statements_log = logging.getLogger("todo_api.sql")

CONFLICT_ATTEMPTS = 5


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
            raise DatabaseError(
                f"no database connection came free within {self._timeout:g} s "
                f"(pool capacity {self._capacity}: DB_POOL_SIZE + DB_MAX_OVERFLOW)",
                failure=Failure.UNAVAILABLE,
                not_executed=True,
            ) from None

    async def __aexit__(self, *_exc_info: object) -> None:
        self._slots.release()


class Database:
    """Where every statement of the app goes through (migrations aside)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        capacity: int,
        queue_timeout: float,
        transaction_setup: Sequence[str] = (),
        transaction_report: str | None = None,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._queue = ConnectionQueue(capacity, queue_timeout)
        # After a Neon compute suspends, every pooled connection may be dead, and a few of them
        # may not know it yet (asyncpg learns of the server's goodbye a few ms late): a retry
        # may meet another dead one. Each such failure costs no round trip.
        self._lost_connection_attempts = capacity + 1
        self._statement_observers: list[StatementObserver] = []
        self.executor: Executor = (
            PostgresExecutor(engine, self._observe)
            if self.dialect == "postgresql"
            else SqliteExecutor(engine, self._observe, transaction_setup, transaction_report)
        )

    def observe_commits(self, observer: Callable[[Rows], None]) -> bool:
        """SQLite: call `observer(rows of transaction_report)` after each write transaction
        commits (one process: an in-process fan-out). False on PostgreSQL, where writes
        announce themselves (NOTIFY)."""
        if not isinstance(self.executor, SqliteExecutor):
            return False
        self.executor.committed.append(observer)
        return True

    def observe_statements(self, observer: StatementObserver) -> None:
        """Call `observer(sql, seconds)` after every statement (the statement metrics)."""
        self._statement_observers.append(observer)

    async def rows(
        self,
        statement: sa.Executable,
        parameters: Mapping[str, Any] | None = None,
        *,
        idempotent: bool,
    ) -> Rows:
        """One statement (a SELECT, or a change with RETURNING) in autocommit; its rows."""
        values = parameters or {}
        return await self._retrying(lambda: self.executor.rows(statement, values), idempotent)

    async def transaction(self, work: Callable[[Session], Awaitable[T]], *, idempotent: bool) -> T:
        """`work`'s statements in one transaction, committed before this returns; the whole
        of `work` runs again when the retry policy allows."""
        return await self._retrying(lambda: self.executor.transaction(work), idempotent)

    async def snapshot(self, work: Callable[[Session], Awaitable[T]]) -> T:
        """`work`'s reads in one read-only transaction that sees one committed state
        (PostgreSQL: REPEATABLE READ), so that several statements agree with each other."""
        return await self._retrying(
            lambda: self.executor.transaction(work, snapshot=True), idempotent=True
        )

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], idempotent: bool) -> T:
        """Await `attempt()` in turn for a connection, and again when that cannot apply a
        change twice:
        - the server aborted it as a deadlock victim or a serialization failure (nothing was
          kept): up to CONFLICT_ATTEMPTS in all, after a short, growing, jittered pause;
        - its connection was lost (a Neon compute suspending, a pooler restarting), on another
          connection, as long as it provably did not take effect (never sent, or refused by
          the server) or is `idempotent` (a read, an insert of a known id), until every
          connection the pool could hold has been tried. A write whose connection vanished
          without an answer may have committed: running it again could toggle a task twice,
          so the error (a 503) goes to the client.
        """
        lost_connections = 0
        attempt_number = 1
        while True:
            try:
                async with self._queue:
                    return await attempt()
            except DatabaseError as error:
                if error.failure is Failure.CONFLICT and attempt_number < CONFLICT_ATTEMPTS:
                    log.warning(
                        "transaction aborted by a concurrent one (SQLSTATE %s); retry %d of %d",
                        error.sqlstate, attempt_number, CONFLICT_ATTEMPTS - 1,
                    )  # fmt: skip
                    await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt_number))
                    attempt_number += 1
                elif (
                    error.connection_lost
                    and lost_connections < self._lost_connection_attempts
                    and (error.not_executed or idempotent)
                ):
                    lost_connections += 1
                    log.warning("database connection lost; retrying on another one: %s", error)
                else:
                    raise

    def _observe(self, sql: str, seconds: float) -> None:
        # Statements only, never their parameters: those are users' titles and descriptions.
        if statements_log.isEnabledFor(logging.DEBUG):
            statements_log.debug("%.2f ms: %s", seconds * 1000, " ".join(sql.split()))
        for observer in self._statement_observers:
            observer(sql, seconds)
