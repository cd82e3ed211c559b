"""PostgreSQL's hot path: prebuilt SQLAlchemy Core statements run directly on asyncpg.

SQLAlchemy still builds and compiles every statement (once, for the engine's dialect) and still
owns the pool; only the execution is direct. Its async execution of one statement (an
AsyncConnection, a greenlet hop per call, the compiled-cache lookup, an execution context, a
Result) cost about 180 µs of CPU per request in the profile, against about 70 µs for the query
itself in asyncpg. Here a request costs one pool checkout (with the pool's checks: dead and
idle connections, recycling), one `fetch` of the compiled SQL with `$n` parameters (asyncpg
prepares and caches it per connection, or not at all behind a transaction-mode pooler), and the
check-in.

Failures are raised as SQLAlchemy raises them (a `DBAPIError` subclass wrapping the
driver's error, `connection_invalidated` when the connection died, which leaves the pool), so
retries and problem answers do not depend on which path ran.

Statements run in autocommit: each is atomic on its own. Work that needs a transaction, and
statements SQLAlchemy must finish compiling per execution (an expanding `IN`), take
SQLAlchemy's path (`compiled_for` returns None for the latter).
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

Processor = Callable[[Any], Any]
StatementObserver = Callable[[str, float], None]  # (SQL, seconds) after each statement

# SQLAlchemy's cursor events do not fire here: the metrics register for these instead.
_observers: weakref.WeakKeyDictionary[Engine, StatementObserver] = weakref.WeakKeyDictionary()


def observe_statements(engine: AsyncEngine, observer: StatementObserver) -> None:
    """Call `observer` after every statement this module runs on `engine`."""
    _observers[engine.sync_engine] = observer


@dataclass(frozen=True)
class Compiled:
    """A statement compiled once: its SQL, and how to turn named parameters into `$n` ones."""

    sql: str
    names: tuple[str, ...]  # the parameter behind $1, $2, …
    # Values SQLAlchemy bound itself, such as the 1 of `version + 1`.
    constants: Mapping[str, Any]
    binds: Mapping[str, Processor]  # the column types' conversions of parameter values
    results: tuple[tuple[int, Processor], ...]  # the same for returned columns: (index, it)

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        values = []
        for name in self.names:
            value = parameters[name] if name in parameters else self.constants[name]
            process = self.binds.get(name)
            values.append(value if process is None or value is None else process(value))
        return values

    def row(self, record: Sequence[Any]) -> Sequence[Any]:
        if not self.results:
            return record
        values = list(record)
        for index, process in self.results:
            values[index] = process(values[index])
        return values


@functools.lru_cache(maxsize=256)  # statements are prebuilt: a few dozen shapes in all
def compiled_for(statement: sa.Executable, dialect: Dialect) -> Compiled | None:
    """The statement compiled for the dialect; None if it must be compiled per execution."""
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    if compiled.post_compile_params or compiled.literal_execute_params:
        return None
    binds = compiled.binds
    columns = getattr(statement, "exported_columns", ())
    return Compiled(
        sql=compiled.string,
        names=tuple(compiled.positiontup or ()),
        constants={name: bind.value for name, bind in binds.items() if not bind.required},
        binds={
            name: process
            for name, bind in binds.items()
            if (process := bind.type._cached_bind_processor(dialect)) is not None
        },
        results=tuple(
            (index, process)
            for index, column in enumerate(columns)
            if (process := column.type._cached_result_processor(dialect, None)) is not None
        ),
    )


async def fetch(
    engine: AsyncEngine, compiled: Compiled, parameters: Mapping[str, Any]
) -> list[Sequence[Any]]:
    """Run one compiled statement in autocommit on a pooled connection; its rows."""
    arguments = compiled.arguments(parameters)
    dialect = engine.dialect
    try:
        pooled = await engine.raw_connection()
    except dialect.loaded_dbapi.Error as error:  # could not connect: wrapped as connect() does
        raise _wrapped(error, dialect, None, lost=False) from error
    try:
        driver = pooled.driver_connection
        observer = _observers.get(engine.sync_engine)
        started = time.perf_counter()
        try:
            records = await driver.fetch(compiled.sql, *arguments)  # type: ignore[union-attr]
            if observer is not None:
                observer(compiled.sql, time.perf_counter() - started)
        except Exception as error:
            lost = driver.is_closed()  # type: ignore[union-attr]
            if isinstance(error, TimeoutError) and not lost:
                lost = not await cancelled(driver)
            if lost or not isinstance(error, asyncpg.PostgresError | TimeoutError):
                # After anything but an error the server reported or a cancelled statement,
                # the connection's state is unknown: the pool gets a new one.
                pooled.invalidate(error)
            translated = _translated(error, dialect)
            if translated is None:
                raise  # OSError, TimeoutError: raised as they are, as SQLAlchemy does
            raise _wrapped(translated, dialect, compiled.sql, lost=lost) from error
        except BaseException:
            # Cancelled mid-statement: the connection's state is unknown, so it is not reused.
            pooled.invalidate()
            raise
    finally:
        # Checked in inside a greenlet, as SQLAlchemy does: closing an overflow connection
        # awaits the driver.
        await greenlet_spawn(pooled.close)
    return [compiled.row(record) for record in records]


# How long to wait, after a statement timed out, for the server to confirm its cancellation.
CANCEL_WAIT_SECONDS = 5.0


async def cancelled(driver: Any) -> bool:
    """Wait until the statement that just timed out (DB_STATEMENT_TIMEOUT) is over; False if
    that could not be confirmed.

    asyncpg gives up waiting at once and sends the server a cancel request on the side; the
    statement may still be running (waiting for a row lock, say). Answering the client before
    it is over would let a write that was reported as failed go through afterwards (seen
    through PgBouncer, where the cancel takes an extra hop). asyncpg holds the connection's
    next statement until the cancellation is done, so one trivial statement waits for it.
    """
    try:
        await driver.execute("SELECT 1", timeout=CANCEL_WAIT_SECONDS)
    except Exception:  # the connection is in no state to be reused
        return False
    return True


def _translated(error: Exception, dialect: Dialect) -> Exception | None:
    """The DB-API error SQLAlchemy's asyncpg adapter makes of an asyncpg error (None: none)."""
    translations: Mapping[type, type] = dialect.loaded_dbapi._asyncpg_error_translate
    for kind in type(error).__mro__:
        if kind in translations:
            translated: Exception = translations[kind](
                error.args[0] if error.args else str(error), error
            )
            translated.__cause__ = error
            return translated
    return None


def _wrapped(error: Exception, dialect: Dialect, statement: str | None, *, lost: bool) -> Exception:
    """The SQLAlchemy exception for a DB-API error, as `Connection.execute` raises it."""
    wrapped: Exception = exc.DBAPIError.instance(
        statement,
        None,
        error,
        dialect.loaded_dbapi.Error,
        hide_parameters=True,
        connection_invalidated=lost,
        dialect=dialect,
    )
    return wrapped
