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

import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from todo_api.models import Task, TaskCreate, TaskRead, User, utcnow
from todo_api.pagination import Cursor

tasks = Task.__table__  # type: ignore[attr-defined]
users = User.__table__  # type: ignore[attr-defined]
_TASK_COLUMNS = tuple(tasks.c)


def _to_task(row: sa.Row[Any]) -> TaskRead:
    return TaskRead.model_validate(row._mapping)


def _owned(user_id: str, task_id: uuid.UUID) -> sa.ColumnElement[bool]:
    return sa.and_(tasks.c.id == task_id, tasks.c.user_id == user_id)


async def ensure_user(session: AsyncSession, user_id: str, email: str | None = None) -> None:
    """Insert the user if absent (users are provisioned on their first write)."""
    dialect = session.bind.dialect.name if session.bind else "postgresql"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(users)
        .values(id=user_id, email=email, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=[users.c.id])
    )
    await session.execute(statement)


async def create_task(session: AsyncSession, *, user_id: str, data: TaskCreate) -> TaskRead:
    now = utcnow()
    await ensure_user(session, user_id)
    result = await session.execute(
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
    task = _to_task(result.one())
    await session.commit()
    return task


async def get_task(session: AsyncSession, *, user_id: str, task_id: uuid.UUID) -> TaskRead | None:
    result = await session.execute(sa.select(*_TASK_COLUMNS).where(_owned(user_id, task_id)))
    row = result.one_or_none()
    return _to_task(row) if row else None


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
    rows = (await session.execute(query)).all()
    items = [_to_task(row) for row in rows[:limit]]
    more = len(rows) > limit
    cursor = Cursor(created_at=items[-1].created_at, id=items[-1].id) if more else None
    return items, cursor


async def _update(
    session: AsyncSession, *, user_id: str, task_id: uuid.UUID, values: Mapping[str, Any]
) -> TaskRead | None:
    result = await session.execute(
        sa.update(tasks)
        .where(_owned(user_id, task_id))
        .values({**values, "updated_at": utcnow()})
        .returning(*_TASK_COLUMNS)
    )
    row = result.one_or_none()
    await session.commit()
    return _to_task(row) if row else None


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
    result = await session.execute(
        sa.delete(tasks).where(_owned(user_id, task_id)).returning(tasks.c.id)
    )
    deleted = result.one_or_none() is not None
    await session.commit()
    return deleted
