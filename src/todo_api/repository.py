"""Every query on tasks and users: plain async functions over a session.

Rules each function keeps:
- it takes the owner's `user_id` and filters by it in SQL, so a task of another user behaves
  exactly like a task that does not exist;
- a write is one transaction, committed here before the route answers (a commit in a dependency
  teardown would run after the response was sent);
- changes are single statements with RETURNING: no read-then-write in Python, so concurrent
  requests cannot lose each other's updates, and each write costs one round trip. An If-Match
  version check is part of the same UPDATE/DELETE, so it cannot race either.
"""

from __future__ import annotations

import asyncio
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
from sqlalchemy.ext.asyncio import AsyncSession

from todo_api.models import IdempotencyKey, Task, TaskCreate, TaskRead, User, utcnow
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


# --- execution: retry lost connections and lock conflicts, commit writes before answering ------

# SQLSTATEs that mean "this transaction lost a race, nothing of it was kept, run it again":
# serialization_failure and deadlock_detected. Neither may reach a client as a 5xx.
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
CONFLICT_ATTEMPTS = 5


def _sqlstate(error: exc.DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)


async def _run(session: AsyncSession, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` in the session's transaction, again if that is safe and may succeed.

    - The connection died under it (a Neon compute suspending, a pooler restarting): nothing
      was committed, so it runs once more on a fresh connection instead of failing the request.
    - PostgreSQL aborted it as a deadlock victim or a serialization failure: the transaction
      was rolled back whole, so it runs again (up to CONFLICT_ATTEMPTS in all, after a short,
      growing, jittered pause that lets the winner finish).
    """
    lost_connection_retried = False
    attempt = 1
    while True:
        try:
            return await work()
        except exc.DBAPIError as error:
            if error.connection_invalidated and not lost_connection_retried:
                lost_connection_retried = True
                log.warning("database connection lost before commit; retrying: %s", error.orig)
            elif _sqlstate(error) in _CONFLICT_SQLSTATES and attempt < CONFLICT_ATTEMPTS:
                log.warning(
                    "transaction aborted by a concurrent one (SQLSTATE %s); retry %d of %d",
                    _sqlstate(error), attempt, CONFLICT_ATTEMPTS - 1,
                )  # fmt: skip
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
                attempt += 1
            else:
                raise
            await session.rollback()


_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


async def _execute(session: AsyncSession, *statements: sa.Executable) -> Sequence[sa.Row[Any]]:
    """The statements in one transaction; the rows of the last one.

    A single statement is atomic by itself, so it runs in autocommit mode: no BEGIN before it
    and no COMMIT or ROLLBACK after it, one round trip instead of three.
    """

    async def work() -> Sequence[sa.Row[Any]]:
        if not session.in_transaction():
            await session.connection(execution_options=_AUTOCOMMIT if len(statements) == 1 else {})
        result = None
        for statement in statements:
            result = await session.execute(statement)
        assert result is not None
        return result.all()  # every last statement here is a SELECT or has RETURNING

    return await _run(session, work)


async def _write(session: AsyncSession, *statements: sa.Executable) -> Sequence[sa.Row[Any]]:
    # A failure during COMMIT itself is not retried: the write may have landed, and only the
    # client can decide (it gets a 503).
    rows = await _execute(session, *statements)
    await session.commit()
    return rows


def _to_task(row: sa.Row[Any]) -> TaskRead:
    # Rows come from our own table through typed columns: no second validation needed.
    return TaskRead.model_construct(**row._mapping)


def _one_task(rows: Sequence[sa.Row[Any]]) -> TaskRead | None:
    return _to_task(rows[0]) if rows else None


def _owned(user_id: str, task_id: uuid.UUID) -> sa.ColumnElement[bool]:
    return sa.and_(tasks.c.id == task_id, tasks.c.user_id == user_id)


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind else "postgresql"


def _insert(session: AsyncSession) -> Any:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING."""
    return postgresql.insert if _dialect(session) == "postgresql" else sqlite.insert


def _ensure_user(session: AsyncSession, user_id: str, email: str | None) -> sa.Executable:
    """Insert the user if absent (users are provisioned on their first write).

    `email` (from the token) is recorded on that first write only: the identity provider owns
    the address, and a later token never overwrites or fills it in (that would cost every
    write an UPDATE, racing with the UNIQUE constraint). An address already held by another
    user is not recorded: the user is created with a NULL email instead of failing the write.
    """
    now = utcnow()
    if email is None:
        statement: sa.Executable = (
            _insert(session)(users)
            .values(id=user_id, email=None, created_at=now)
            .on_conflict_do_nothing(index_elements=[users.c.id])
        )
        return statement
    # One statement, two candidate rows tried in order, any unique conflict skipped: the row
    # with the email when both id and email are free, else the one without it when the email
    # is taken, else nothing (the user exists). ON CONFLICT makes this race-free where a
    # "does another user have this email?" SELECT first would not be.
    statement = (
        _insert(session)(users)
        .values(
            [
                {"id": user_id, "email": email, "created_at": now},
                {"id": user_id, "email": None, "created_at": now},
            ]
        )
        .on_conflict_do_nothing()
    )
    return statement


# --- create ------------------------------------------------------------------------------------


def _new_task(user_id: str, data: TaskCreate) -> TaskRead:
    # Everything about a new task is decided here, so its representation is known before the
    # INSERT (the idempotency record stores it in the same transaction).
    now = utcnow()
    return TaskRead(id=uuid.uuid4(), user_id=user_id, created_at=now, updated_at=now, version=1,
                    **data.model_dump())  # fmt: skip


async def create_task(
    session: AsyncSession, *, user_id: str, data: TaskCreate, email: str | None = None
) -> TaskRead:
    task = _new_task(user_id, data)
    insert = sa.insert(tasks).values(task.model_dump()).returning(tasks.c.id)
    ensure_user = _ensure_user(session, user_id, email)
    if _dialect(session) == "postgresql":
        # One statement (the user upsert as a CTE): atomic on its own, one round trip.
        await _write(session, insert.add_cte(ensure_user.cte("provisioned")))  # type: ignore[attr-defined]
    else:
        await _write(session, ensure_user, insert)  # SQLite has no INSERT inside WITH
    return task


def request_fingerprint(data: TaskCreate) -> str:
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


async def create_task_once(
    session: AsyncSession,
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
    claim = (
        _insert(session)(idempotency_keys)
        .values(
            user_id=user_id,
            key=key,
            request_hash=fingerprint,
            response_body=task.model_dump_json(),
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

    async def work() -> sa.Row[Any] | None:
        await session.execute(_ensure_user(session, user_id, email))
        await session.execute(expired)
        if (await session.execute(claim)).first() is None:
            return (await session.execute(previous)).one()
        await session.execute(sa.insert(tasks).values(task.model_dump()))
        return None

    stored = await _run(session, work)
    if stored is None:
        await session.commit()
        return task, False
    await session.rollback()  # nothing of ours to keep (the user row exists already)
    if stored.request_hash != fingerprint:
        raise IdempotencyKeyReused(key)
    return TaskRead.model_validate_json(stored.response_body), True


# --- read ----------------------------------------------------------------------------------------


async def get_task(session: AsyncSession, *, user_id: str, task_id: uuid.UUID) -> TaskRead | None:
    query = sa.select(*_TASK_COLUMNS).where(_owned(user_id, task_id))
    return _one_task(await _execute(session, query))


def _filtered(user_id: str, filters: TaskFilter) -> list[sa.ColumnElement[bool]]:
    conditions = [tasks.c.user_id == user_id]
    if filters.completed is not None:
        conditions.append(tasks.c.completed.is_(filters.completed))
    if filters.q:
        # ILIKE on PostgreSQL (served by the trigram indexes), lower() LIKE lower() on SQLite;
        # autoescape makes % and _ in the search text literal.
        conditions.append(
            sa.or_(
                tasks.c.title.icontains(filters.q, autoescape=True),
                tasks.c.description.icontains(filters.q, autoescape=True),
            )
        )
    if filters.updated_since is not None:
        conditions.append(tasks.c.updated_at >= filters.updated_since)
    return conditions


async def list_tasks(
    session: AsyncSession,
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
    column = tasks.c[sort.field]
    conditions = _filtered(user_id, filters)
    page = sa.select(*_TASK_COLUMNS).where(*conditions)
    if after is not None:
        position = sa.tuple_(column, tasks.c.id)
        boundary = sa.tuple_(
            sa.literal(after.key, column.type), sa.literal(after.id, tasks.c.id.type)
        )
        page = page.where(position < boundary if sort.descending else position > boundary)
    order = (column.desc(), tasks.c.id.desc()) if sort.descending else (column, tasks.c.id)
    # One extra row tells whether another page exists without a COUNT.
    rows = await _execute(session, page.order_by(*order).limit(limit + 1))
    items = [_to_task(row) for row in rows[:limit]]
    cursor = None
    if len(rows) > limit:
        last = items[-1]
        cursor = Cursor(
            sort=sort, scope=filters.fingerprint(), key=getattr(last, sort.field), id=last.id
        )
    total = None
    if include_total:
        count = sa.select(sa.func.count()).select_from(tasks).where(*conditions)
        total = int((await _execute(session, count))[0][0])
    return Page(items=items, next_cursor=cursor, total=total)


async def task_stats(session: AsyncSession, *, user_id: str) -> Stats:
    """Counts in one query (one index range scan of the user's tasks)."""
    query = sa.select(sa.func.count(), sa.func.count().filter(tasks.c.completed.is_(True))).where(
        tasks.c.user_id == user_id
    )
    counts: Sequence[Any] = (await _execute(session, query))[0]
    return Stats(total=int(counts[0]), completed=int(counts[1]))


# --- change -------------------------------------------------------------------------------------


async def _changed(
    session: AsyncSession,
    statement: sa.Update | sa.Delete,
    *,
    user_id: str,
    task_id: uuid.UUID,
    if_match: Sequence[int] | None,
) -> Sequence[sa.Row[Any]]:
    """Run an UPDATE/DELETE of one owned task, with the If-Match versions in its WHERE clause.

    No row back means the task is missing or its version differs; only then is it read, to
    tell the two apart (404 or 412).
    """
    statement = statement.where(_owned(user_id, task_id))
    if if_match is not None:
        statement = statement.where(tasks.c.version.in_(if_match))
    rows = await _write(session, statement)
    if not rows and if_match is not None:
        current = await get_task(session, user_id=user_id, task_id=task_id)
        if current is not None:
            raise StaleVersion(current)
    return rows


async def _update(
    session: AsyncSession,
    *,
    user_id: str,
    task_id: uuid.UUID,
    values: Mapping[str, Any],
    if_match: Sequence[int] | None,
) -> TaskRead | None:
    statement = (
        sa.update(tasks)
        .values({**values, "updated_at": utcnow(), "version": tasks.c.version + 1})
        .returning(*_TASK_COLUMNS)
    )
    rows = await _changed(session, statement, user_id=user_id, task_id=task_id, if_match=if_match)
    return _one_task(rows)


async def replace_task(
    session: AsyncSession,
    *,
    user_id: str,
    task_id: uuid.UUID,
    data: TaskCreate,
    if_match: Sequence[int] | None = None,
) -> TaskRead | None:
    return await _update(
        session, user_id=user_id, task_id=task_id, values=data.model_dump(), if_match=if_match
    )


async def update_task(
    session: AsyncSession,
    *,
    user_id: str,
    task_id: uuid.UUID,
    changes: Mapping[str, Any],
    if_match: Sequence[int] | None = None,
) -> TaskRead | None:
    if not changes:  # nothing to change: not a modification; version and updated_at stay
        task = await get_task(session, user_id=user_id, task_id=task_id)
        if task is not None and if_match is not None and task.version not in if_match:
            raise StaleVersion(task)
        return task
    return await _update(
        session, user_id=user_id, task_id=task_id, values=changes, if_match=if_match
    )


async def set_completion(
    session: AsyncSession,
    *,
    user_id: str,
    task_id: uuid.UUID,
    completed: bool | None,
    if_match: Sequence[int] | None = None,
) -> TaskRead | None:
    """Set `completed`, or flip it when `completed` is None.

    The flip is `SET completed = NOT completed` in the UPDATE itself, so fifty concurrent
    toggles flip fifty times instead of racing on a value read earlier.
    """
    value: Any = sa.not_(tasks.c.completed) if completed is None else completed
    return await _update(
        session, user_id=user_id, task_id=task_id, values={"completed": value}, if_match=if_match
    )


async def delete_task(
    session: AsyncSession,
    *,
    user_id: str,
    task_id: uuid.UUID,
    if_match: Sequence[int] | None = None,
) -> bool:
    statement = sa.delete(tasks).returning(tasks.c.id)
    rows = await _changed(session, statement, user_id=user_id, task_id=task_id, if_match=if_match)
    return bool(rows)


async def delete_tasks(session: AsyncSession, *, user_id: str, completed: bool) -> int:
    """Delete all of the user's tasks whose `completed` is as given; how many."""
    statement = (
        sa.delete(tasks)
        .where(tasks.c.user_id == user_id, tasks.c.completed.is_(completed))
        .returning(tasks.c.id)
    )
    return len(await _write(session, statement))
