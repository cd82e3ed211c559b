"""Every query on tasks and users: plain async functions over the engine.

Rules each function keeps:
- it takes the owner's `user_id` and filters by it in SQL, so a task of another user behaves
  exactly like a task that does not exist;
- it is one unit of work on one pooled connection, held only while it runs, and a write is
  durable before the function returns (so before the route answers);
- changes are single statements with RETURNING: no read-then-write in Python, so concurrent
  requests cannot lose each other's updates, and each write costs one round trip. An If-Match
  version check is part of the same UPDATE/DELETE, so it cannot race either.

Statements are SQLAlchemy Core on the SQLModel tables, built once (module level or cached per
shape) with bound parameters: building and hashing a statement costs more CPU than running it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from todo_api import driver
from todo_api.database import CONFLICT_SQLSTATES, connection_turn, sqlstate_of
from todo_api.models import (
    TASK_JSON,
    IdempotencyKey,
    Task,
    TaskCreate,
    TaskRead,
    User,
    utcnow,
)
from todo_api.pagination import Cursor, Sort, TaskFilter

log = logging.getLogger("todo_api.repository")

tasks = Task.__table__  # type: ignore[attr-defined]
users = User.__table__  # type: ignore[attr-defined]
idempotency_keys = IdempotencyKey.__table__  # type: ignore[attr-defined]
_TASK_COLUMNS = tuple(tasks.c)
T = TypeVar("T")


class StaleVersion(Exception):
    """If-Match named versions the task no longer has; `current` is what it is now."""

    def __init__(self, current: TaskRead) -> None:
        super().__init__(f"task is at version {current.version}")
        self.current = current


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was first used with a different request body."""


@dataclass(frozen=True)
class Page:
    items: list[TaskRead]
    next_cursor: Cursor | None
    total: int | None = None


@dataclass(frozen=True)
class Stats:
    total: int
    completed: int

    @property
    def pending(self) -> int:
        return self.total - self.completed


# --- execution: one connection per unit of work, retried only when that is safe ---------------

CONFLICT_ATTEMPTS = 5
_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


def _server_refused(error: exc.DBAPIError) -> bool:
    """True when PostgreSQL itself answered with an error (so nothing was committed), rather
    than the connection vanishing without a word (when a COMMIT may have happened).

    asyncpg reports a connection the server closed with a FATAL error (57P01 "terminating
    connection due to administrator command") as a client-side 08003 whose cause is the
    server's error; class 08 alone is asyncpg's own verdict on a silent socket.
    """
    cause: BaseException | None = error.orig
    while cause is not None:
        sqlstate = sqlstate_of(cause)
        if sqlstate and not sqlstate.startswith("08"):
            return True
        cause = cause.__cause__
    return False


async def _retrying(
    engine: AsyncEngine, attempt: Callable[[], Awaitable[T]], *, idempotent: bool
) -> T:
    """Await `attempt()` (in turn for a pooled connection), and again when that cannot apply
    a change twice:
    - PostgreSQL aborted it as a deadlock victim or a serialization failure (nothing was kept):
      up to CONFLICT_ATTEMPTS in all, after a short, growing, jittered pause;
    - the connection died (a Neon compute suspending, a pooler restarting), once, on a fresh
      connection, if the server reported the failure (so the statement did not commit) or
      the work is `idempotent` (a read, an insert of a known id). A write whose connection
      vanished without an answer may have committed: running it again could toggle a task
      twice, so the error (a 503) goes to the client, which knows what it asked for.
    """
    lost_connection_retried = False
    attempt_number = 1
    while True:
        try:
            async with connection_turn(engine):
                return await attempt()
        except exc.DBAPIError as error:
            sqlstate = sqlstate_of(error)
            if sqlstate in CONFLICT_SQLSTATES and attempt_number < CONFLICT_ATTEMPTS:
                log.warning(
                    "transaction aborted by a concurrent one (SQLSTATE %s); retry %d of %d",
                    sqlstate, attempt_number, CONFLICT_ATTEMPTS - 1,
                )  # fmt: skip
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt_number))
                attempt_number += 1
            elif (
                error.connection_invalidated
                and not lost_connection_retried
                and (idempotent or _server_refused(error))
            ):
                lost_connection_retried = True
                log.warning("database connection lost (SQLSTATE %s); retrying: %s",
                            sqlstate, error.orig)  # fmt: skip
            else:
                raise


async def _run(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    transaction: bool = False,
    idempotent: bool,
) -> T:
    """Run `work` on a pooled SQLAlchemy connection, retried as `_retrying` allows: in
    autocommit mode (each statement is atomic by itself: no BEGIN and COMMIT round trips), or in
    one transaction committed here."""

    async def attempt() -> T:
        async with engine.connect() as connection:
            if not transaction:
                await connection.execution_options(**_AUTOCOMMIT)
                try:
                    return await work(connection)
                except TimeoutError:
                    # As on the driver path: over on the server before the client hears of it.
                    # (In a transaction, the rollback at check-in waits for it.)
                    if engine.dialect.name == "postgresql":
                        await connection.rollback()  # SQLAlchemy's bookkeeping: nothing is sent
                        pooled = await connection.get_raw_connection()
                        if not await driver.cancelled(pooled.driver_connection):
                            await connection.invalidate()
                    raise
            result = await work(connection)
            await connection.commit()
            return result

    return await _retrying(engine, attempt, idempotent=idempotent)


async def _rows(
    engine: AsyncEngine,
    statement: sa.Executable,
    parameters: Mapping[str, Any] | None = None,
    *,
    idempotent: bool,
) -> Sequence[Sequence[Any]]:
    """One prebuilt statement (a SELECT, or a change with RETURNING) in autocommit mode; its
    rows. On PostgreSQL it runs straight on the driver (see `driver`)."""
    parameters = parameters or {}
    if engine.dialect.name == "postgresql":
        compiled = driver.compiled_for(statement, engine.dialect)
        if compiled is not None:
            return await _retrying(
                engine, lambda: driver.fetch(engine, compiled, parameters), idempotent=idempotent
            )

    async def work(connection: AsyncConnection) -> Sequence[sa.Row[Any]]:
        return (await connection.execute(statement, parameters)).all()

    return await _run(engine, work, idempotent=idempotent)


if tuple(column.name for column in _TASK_COLUMNS) != tuple(TaskRead.__dataclass_fields__):
    raise RuntimeError("TaskRead's fields must follow the tasks table's columns, in order")


def _to_task(row: Sequence[Any]) -> TaskRead:
    # Rows come from our own table through typed columns: no second validation needed. Every
    # statement that returns tasks selects _TASK_COLUMNS, which is TaskRead's field order.
    return TaskRead(*row)


def _one_task(rows: Sequence[Sequence[Any]]) -> TaskRead | None:
    return _to_task(rows[0]) if rows else None


# --- statements --------------------------------------------------------------------------------

_OWNED = (tasks.c.id == sa.bindparam("task_id"), tasks.c.user_id == sa.bindparam("owner_id"))
_VERSION_MATCHES = tasks.c.version.in_(sa.bindparam("versions", expanding=True))
_GET = sa.select(*_TASK_COLUMNS).where(*_OWNED)
_STATS = sa.select(sa.func.count(), sa.func.count().filter(tasks.c.completed.is_(True))).where(
    tasks.c.user_id == sa.bindparam("owner_id")
)
_DELETE = sa.delete(tasks).where(*_OWNED).returning(tasks.c.id)
_DELETE_IF_MATCH = _DELETE.where(_VERSION_MATCHES)
_DELETE_ALL = (
    sa.delete(tasks)
    .where(tasks.c.user_id == sa.bindparam("owner_id"), tasks.c.completed == sa.bindparam("done"))
    .returning(tasks.c.id)
)
_NEW_TASK: dict[str, sa.BindParameter[Any]] = {
    column.name: sa.bindparam(f"new_{column.name}") for column in _TASK_COLUMNS
}
_NEW_USER = {
    "id": sa.bindparam("owner_id", type_=users.c.id.type),
    "created_at": sa.bindparam("now", type_=users.c.created_at.type),
}


def _insert(dialect: str) -> Any:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


@functools.cache
def _ensure_user(dialect: str, *, with_email: bool) -> sa.Insert:
    """Insert the user if absent (users are provisioned on their first write).

    The email (from the token) is recorded on that first write only: the identity provider owns
    the address, and a later token never overwrites or fills it in (that would cost every
    write an UPDATE, racing with the UNIQUE constraint). An address already held by another
    user is not recorded: the user is created with a NULL email instead of failing the write.
    """
    if not with_email:
        statement: sa.Insert = (
            _insert(dialect)(users)
            .values(**_NEW_USER, email=None)
            .on_conflict_do_nothing(index_elements=[users.c.id])
        )
        return statement
    # One statement, two candidate rows tried in order, any unique conflict skipped: the row
    # with the email when both id and email are free, else the one without it when the email
    # is taken, else nothing (the user exists). ON CONFLICT makes this race-free where a
    # "does another user have this email?" SELECT first would not be.
    email: sa.BindParameter[Any] = sa.bindparam("owner_email")
    rows = [{**_NEW_USER, "email": email}, {**_NEW_USER, "email": sa.null()}]
    statement = _insert(dialect)(users).values(rows).on_conflict_do_nothing()
    return statement


@functools.cache
def _insert_task(dialect: str) -> sa.Insert:
    # ON CONFLICT (id) DO NOTHING: the id is chosen here, so a retry after a lost connection
    # finds the row it already wrote and leaves it alone instead of failing or doubling it.
    statement: sa.Insert = (
        _insert(dialect)(tasks).values(_NEW_TASK).on_conflict_do_nothing(index_elements=["id"])
    )
    return statement


@functools.cache
def _create_in_one_statement(*, with_email: bool) -> sa.Insert:
    # PostgreSQL: the user upsert as a CTE of the task INSERT, atomic on its own, one round trip.
    provisioned = _ensure_user("postgresql", with_email=with_email).cte("provisioned")
    return _insert_task("postgresql").add_cte(provisioned).returning(tasks.c.id)


@functools.cache
def _update(fields: tuple[str, ...], *, toggle: bool, guarded: bool) -> sa.Update:
    """UPDATE of the given columns (plus updated_at, version) of one owned task, RETURNING it."""
    values: dict[str, Any] = {name: sa.bindparam(f"set_{name}") for name in fields}
    if toggle:
        # In the UPDATE itself, so fifty concurrent toggles flip fifty times instead of racing
        # on a value read earlier.
        values["completed"] = sa.not_(tasks.c.completed)
    values |= {"updated_at": sa.bindparam("now"), "version": tasks.c.version + 1}
    statement = sa.update(tasks).values(values).where(*_OWNED)
    if guarded:
        statement = statement.where(_VERSION_MATCHES)
    return statement.returning(*_TASK_COLUMNS)


@functools.cache
def _page(
    sort: Sort, *, completed: bool, q: bool, updated_since: bool, after: bool, count: bool
) -> sa.Select[Any]:
    """The listing query for one shape of request (which filters, whether after a cursor)."""
    column = tasks.c[sort.field]
    conditions: list[sa.ColumnElement[bool]] = [tasks.c.user_id == sa.bindparam("owner_id")]
    if completed:
        conditions.append(tasks.c.completed == sa.bindparam("completed"))
    if q:
        # ILIKE on PostgreSQL (served by the trigram indexes), lower() LIKE lower() on SQLite.
        pattern: sa.BindParameter[str] = sa.bindparam("pattern")
        conditions.append(
            sa.or_(
                tasks.c.title.ilike(pattern, escape="\\"),
                tasks.c.description.ilike(pattern, escape="\\"),
            )
        )
    if updated_since:
        conditions.append(tasks.c.updated_at >= sa.bindparam("updated_since"))
    if count:
        return sa.select(sa.func.count()).select_from(tasks).where(*conditions)
    if after:
        position = sa.tuple_(column, tasks.c.id)
        boundary = sa.tuple_(
            sa.bindparam("after_key", type_=column.type),
            sa.bindparam("after_id", type_=tasks.c.id.type),
        )
        conditions.append(position < boundary if sort.descending else position > boundary)
    order = (column.desc(), tasks.c.id.desc()) if sort.descending else (column, tasks.c.id)
    return sa.select(*_TASK_COLUMNS).where(*conditions).order_by(*order).limit(sa.bindparam("n"))


def _contains_pattern(text: str) -> str:
    # LIKE's wildcards in the search text are literal characters.
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# --- create ------------------------------------------------------------------------------------


def _new_task(user_id: str, data: TaskCreate) -> TaskRead:
    # Everything about a new task is decided here, so its representation is known before the
    # INSERT (the idempotency record stores it in the same transaction).
    now = utcnow()
    return TaskRead(
        id=uuid.uuid4(), user_id=user_id, created_at=now, updated_at=now, version=1,
        title=data.title, description=data.description, completed=data.completed,
    )  # fmt: skip


def _task_parameters(task: TaskRead, email: str | None) -> dict[str, Any]:
    parameters = {f"new_{name}": getattr(task, name) for name in _NEW_TASK}
    return parameters | {"owner_id": task.user_id, "now": task.created_at, "owner_email": email}


async def create_task(
    engine: AsyncEngine, *, user_id: str, data: TaskCreate, email: str | None = None
) -> TaskRead:
    task = _new_task(user_id, data)
    parameters = _task_parameters(task, email)
    with_email = email is not None
    dialect = engine.dialect.name
    if dialect == "postgresql":
        await _rows(engine, _create_in_one_statement(with_email=with_email), parameters,
                    idempotent=True)  # fmt: skip
        return task

    async def work(connection: AsyncConnection) -> None:  # SQLite has no INSERT inside WITH
        await connection.execute(_ensure_user(dialect, with_email=with_email), parameters)
        await connection.execute(_insert_task(dialect), parameters)

    await _run(engine, work, transaction=True, idempotent=True)
    return task


def request_fingerprint(data: TaskCreate) -> str:
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


async def create_task_once(
    engine: AsyncEngine,
    *,
    user_id: str,
    data: TaskCreate,
    key: str,
    ttl: timedelta,
    email: str | None = None,
) -> tuple[TaskRead, bool]:
    """Create a task under an Idempotency-Key; (task, replayed).

    The key is claimed with INSERT … ON CONFLICT DO NOTHING in the same transaction as the
    task: a concurrent request with the same key waits on the claim (PostgreSQL) or the write
    lock (SQLite), then finds the stored response. Expired keys of the user are removed here.
    """
    fingerprint = request_fingerprint(data)
    task = _new_task(user_id, data)
    now = task.created_at
    dialect = engine.dialect.name
    claim = (
        _insert(dialect)(idempotency_keys)
        .values(
            user_id=user_id,
            key=key,
            request_hash=fingerprint,
            response_body=TASK_JSON.dump_json(task).decode(),
            created_at=now,
            expires_at=now + ttl,
        )
        .on_conflict_do_nothing(index_elements=[idempotency_keys.c.user_id, idempotency_keys.c.key])
        .returning(idempotency_keys.c.key)
    )
    expired = sa.delete(idempotency_keys).where(
        idempotency_keys.c.user_id == user_id, idempotency_keys.c.expires_at <= now
    )
    previous = sa.select(idempotency_keys.c.request_hash, idempotency_keys.c.response_body).where(
        idempotency_keys.c.user_id == user_id, idempotency_keys.c.key == key
    )
    parameters = _task_parameters(task, email)

    async def work(connection: AsyncConnection) -> sa.Row[Any] | None:
        await connection.execute(_ensure_user(dialect, with_email=email is not None), parameters)
        await connection.execute(expired)
        if (await connection.execute(claim)).first() is None:
            return (await connection.execute(previous)).one()
        await connection.execute(_insert_task(dialect), parameters)
        return None

    # Idempotent by construction: run again after a commit whose answer was lost, it finds
    # its own claim and replays it.
    stored = await _run(engine, work, transaction=True, idempotent=True)
    if stored is None:
        return task, False
    if stored.request_hash != fingerprint:
        raise IdempotencyKeyReused(key)
    return TASK_JSON.validate_json(stored.response_body), True


# --- read ----------------------------------------------------------------------------------------


async def get_task(engine: AsyncEngine, *, user_id: str, task_id: uuid.UUID) -> TaskRead | None:
    rows = await _rows(engine, _GET, {"task_id": task_id, "owner_id": user_id}, idempotent=True)
    return _one_task(rows)


async def list_tasks(
    engine: AsyncEngine,
    *,
    user_id: str,
    limit: int,
    sort: Sort | None = None,
    filters: TaskFilter | None = None,
    after: Cursor | None = None,
    include_total: bool = False,
) -> Page:
    """One page in the requested order; the cursor points past its last item when more follow.

    Keyset pagination: `(sort key, id)` strictly after the cursor's, so the query stays an index
    range scan however deep the page, and inserts or deletes elsewhere cannot shift it.
    """
    sort = sort or Sort.parse("-created_at")
    filters = filters or TaskFilter()
    shape = {
        "completed": filters.completed is not None,
        "q": bool(filters.q),
        "updated_since": filters.updated_since is not None,
    }
    parameters: dict[str, Any] = {
        "owner_id": user_id,
        "completed": filters.completed,
        "pattern": _contains_pattern(filters.q) if filters.q else None,
        "updated_since": filters.updated_since,
        "n": limit + 1,  # one extra row tells whether another page exists, without a COUNT
    }
    if after is not None:
        parameters |= {"after_key": after.key, "after_id": after.id}
    query = _page(sort, **shape, after=after is not None, count=False)
    rows = await _rows(engine, query, parameters, idempotent=True)
    items = [_to_task(row) for row in rows[:limit]]
    cursor = None
    if len(rows) > limit:
        last = items[-1]
        cursor = Cursor(
            sort=sort, scope=filters.fingerprint(), key=getattr(last, sort.field), id=last.id
        )
    total = None
    if include_total:
        count = _page(sort, **shape, after=False, count=True)
        total = int((await _rows(engine, count, parameters, idempotent=True))[0][0])
    return Page(items=items, next_cursor=cursor, total=total)


async def task_stats(engine: AsyncEngine, *, user_id: str) -> Stats:
    """Counts in one query (one index range scan of the user's tasks)."""
    counts: Sequence[Any] = (await _rows(engine, _STATS, {"owner_id": user_id}, idempotent=True))[0]
    return Stats(total=int(counts[0]), completed=int(counts[1]))


# --- change -------------------------------------------------------------------------------------


async def _changed(
    engine: AsyncEngine,
    statement: sa.Update | sa.Delete,
    parameters: dict[str, Any],
    *,
    if_match: Sequence[int] | None,
) -> Sequence[Sequence[Any]]:
    """Run an UPDATE/DELETE of one owned task, guarded by If-Match versions when given.

    No row back means the task is missing or its version differs; only then is it read, to
    tell the two apart (404 or 412).
    """
    if if_match is not None:
        parameters["versions"] = list(if_match)
    rows = await _rows(engine, statement, parameters, idempotent=False)
    if not rows and if_match is not None:
        current = await get_task(
            engine, user_id=parameters["owner_id"], task_id=parameters["task_id"]
        )
        if current is not None:
            raise StaleVersion(current)
    return rows


async def _update_one(
    engine: AsyncEngine,
    *,
    user_id: str,
    task_id: uuid.UUID,
    values: Mapping[str, Any],
    toggle: bool = False,
    if_match: Sequence[int] | None,
) -> TaskRead | None:
    fields = tuple(sorted(values))
    statement = _update(fields, toggle=toggle, guarded=if_match is not None)
    parameters = {f"set_{name}": values[name] for name in fields}
    parameters |= {"task_id": task_id, "owner_id": user_id, "now": utcnow()}
    return _one_task(await _changed(engine, statement, parameters, if_match=if_match))


async def replace_task(
    engine: AsyncEngine,
    *,
    user_id: str,
    task_id: uuid.UUID,
    data: TaskCreate,
    if_match: Sequence[int] | None = None,
) -> TaskRead | None:
    return await _update_one(
        engine, user_id=user_id, task_id=task_id, values=data.model_dump(), if_match=if_match
    )


async def update_task(
    engine: AsyncEngine,
    *,
    user_id: str,
    task_id: uuid.UUID,
    changes: Mapping[str, Any],
    if_match: Sequence[int] | None = None,
) -> TaskRead | None:
    if not changes:  # nothing to change: not a modification; version and updated_at stay
        task = await get_task(engine, user_id=user_id, task_id=task_id)
        if task is not None and if_match is not None and task.version not in if_match:
            raise StaleVersion(task)
        return task
    return await _update_one(
        engine, user_id=user_id, task_id=task_id, values=changes, if_match=if_match
    )


async def set_completion(
    engine: AsyncEngine,
    *,
    user_id: str,
    task_id: uuid.UUID,
    completed: bool | None,
    if_match: Sequence[int] | None = None,
) -> TaskRead | None:
    """Set `completed`, or flip it when `completed` is None."""
    values = {} if completed is None else {"completed": completed}
    return await _update_one(
        engine, user_id=user_id, task_id=task_id, values=values, toggle=completed is None,
        if_match=if_match,
    )  # fmt: skip


async def delete_task(
    engine: AsyncEngine,
    *,
    user_id: str,
    task_id: uuid.UUID,
    if_match: Sequence[int] | None = None,
) -> bool:
    statement = _DELETE if if_match is None else _DELETE_IF_MATCH
    parameters = {"task_id": task_id, "owner_id": user_id}
    return bool(await _changed(engine, statement, parameters, if_match=if_match))


async def delete_tasks(engine: AsyncEngine, *, user_id: str, completed: bool) -> int:
    """Delete all of the user's tasks whose `completed` is as given; how many."""
    parameters = {"owner_id": user_id, "done": completed}
    return len(await _rows(engine, _DELETE_ALL, parameters, idempotent=False))
