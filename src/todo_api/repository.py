"""Every query on tasks and users: plain async functions over a session.

Rules each function keeps:
- it takes the owner's `user_id` and filters by it in SQL, so a task of another user behaves
  exactly like a task that does not exist;
- a write is one transaction, committed here before the route answers (a commit in a dependency
  teardown would run after the response was sent);
- changes are single statements with RETURNING: no read-then-write in Python, so concurrent
  requests cannot lose each other's updates, and each write costs one round trip.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from todo_api.models import Task, TaskCreate, TaskRead, User, utcnow
from todo_api.pagination import Cursor

log = logging.getLogger("todo_api.repository")

tasks = Task.__table__  # type: ignore[attr-defined]
users = User.__table__  # type: ignore[attr-defined]
_TASK_COLUMNS = tuple(tasks.c)


def _to_task(row: sa.Row[Any]) -> TaskRead:
    return TaskRead.model_validate(row._mapping)


def _owned(user_id: str, task_id: uuid.UUID) -> sa.ColumnElement[bool]:
    return sa.and_(tasks.c.id == task_id, tasks.c.user_id == user_id)


async def _execute(session: AsyncSession, *statements: sa.Executable) -> Sequence[sa.Row[Any]]:
    """Run the statements in the session's transaction; the rows of the last one.

    If the connection dies under them (a Neon compute suspending, a pooler restarting), nothing
    was committed, so they run once more on a fresh connection instead of failing the request.
    """
    for attempt in (1, 2):
        try:
            result = None
            for statement in statements:
                result = await session.execute(statement)
            assert result is not None
            return result.all()  # every last statement here is a SELECT or has RETURNING
        except exc.DBAPIError as error:
            if attempt == 2 or not error.connection_invalidated:
                raise
            log.warning("database connection lost before commit; retrying once: %s", error.orig)
            await session.rollback()
    raise AssertionError("unreachable")  # pragma: no cover


async def _write(session: AsyncSession, *statements: sa.Executable) -> Sequence[sa.Row[Any]]:
    # A failure during COMMIT itself is not retried: the write may have landed, and only the
    # client can decide (it gets a 503).
    rows = await _execute(session, *statements)
    await session.commit()
    return rows


def _one_task(rows: Sequence[sa.Row[Any]]) -> TaskRead | None:
    return _to_task(rows[0]) if rows else None


def _ensure_user(session: AsyncSession, user_id: str, email: str | None) -> sa.Executable:
    """Insert the user if absent (users are provisioned on their first write)."""
    dialect = session.bind.dialect.name if session.bind else "postgresql"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(users)
        .values(id=user_id, email=email, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=[users.c.id])
    )


async def create_task(
    session: AsyncSession, *, user_id: str, data: TaskCreate, email: str | None = None
) -> TaskRead:
    now = utcnow()
    insert = (
        sa.insert(tasks)
        .values(
            id=uuid.uuid4(),
            user_id=user_id,
            title=data.title,
            description=data.description,
            completed=data.completed,
            created_at=now,
            updated_at=now,
        )
        .returning(*_TASK_COLUMNS)
    )
    rows = await _write(session, _ensure_user(session, user_id, email), insert)
    return _to_task(rows[0])


async def get_task(session: AsyncSession, *, user_id: str, task_id: uuid.UUID) -> TaskRead | None:
    query = sa.select(*_TASK_COLUMNS).where(_owned(user_id, task_id))
    return _one_task(await _execute(session, query))


async def list_tasks(
    session: AsyncSession, *, user_id: str, limit: int, after: Cursor | None = None
) -> tuple[list[TaskRead], Cursor | None]:
    """One page, newest first; the cursor points past the last item when more may follow."""
    query = sa.select(*_TASK_COLUMNS).where(tasks.c.user_id == user_id)
    if after is not None:
        query = query.where(
            sa.tuple_(tasks.c.created_at, tasks.c.id) < sa.tuple_(after.created_at, after.id)
        )
    # One extra row tells whether another page exists without a COUNT.
    query = query.order_by(tasks.c.created_at.desc(), tasks.c.id.desc()).limit(limit + 1)
    rows = await _execute(session, query)
    items = [_to_task(row) for row in rows[:limit]]
    more = len(rows) > limit
    cursor = Cursor(created_at=items[-1].created_at, id=items[-1].id) if more else None
    return items, cursor


async def _update(
    session: AsyncSession, *, user_id: str, task_id: uuid.UUID, values: Mapping[str, Any]
) -> TaskRead | None:
    statement = (
        sa.update(tasks)
        .where(_owned(user_id, task_id))
        .values({**values, "updated_at": utcnow()})
        .returning(*_TASK_COLUMNS)
    )
    return _one_task(await _write(session, statement))


async def replace_task(
    session: AsyncSession, *, user_id: str, task_id: uuid.UUID, data: TaskCreate
) -> TaskRead | None:
    return await _update(session, user_id=user_id, task_id=task_id, values=data.model_dump())


async def update_task(
    session: AsyncSession, *, user_id: str, task_id: uuid.UUID, changes: Mapping[str, Any]
) -> TaskRead | None:
    if not changes:  # nothing to change: not a modification, updated_at stays
        return await get_task(session, user_id=user_id, task_id=task_id)
    return await _update(session, user_id=user_id, task_id=task_id, values=changes)


async def set_completion(
    session: AsyncSession, *, user_id: str, task_id: uuid.UUID, completed: bool | None
) -> TaskRead | None:
    """Set `completed`, or flip it when `completed` is None.

    The flip is `SET completed = NOT completed` in the UPDATE itself, so fifty concurrent
    toggles flip fifty times instead of racing on a value read earlier.
    """
    value: Any = sa.not_(tasks.c.completed) if completed is None else completed
    return await _update(session, user_id=user_id, task_id=task_id, values={"completed": value})


async def delete_task(session: AsyncSession, *, user_id: str, task_id: uuid.UUID) -> bool:
    statement = sa.delete(tasks).where(_owned(user_id, task_id)).returning(tasks.c.id)
    return bool(await _write(session, statement))
