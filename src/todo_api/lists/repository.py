"""Every query on lists. Each takes the owner's `user_id` and filters by it in SQL; lists are
keyed by `(user_id, id)`, so another user's list is simply not found.

A list's counts are read with it (correlated counts over the `(user_id, list_id, position)`
index). Creating, moving and deleting lists lock the user's row first, which serialises
them per user: the list quota and the order keys are then read and written race-free.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from todo_api.lists.errors import InboxNotDeletable, ListNotFound
from todo_api.lists.schemas import ListRead
from todo_api.platform.database.database import Database
from todo_api.platform.database.executors import Session
from todo_api.platform.database.ordering import Ordering, last_key, place
from todo_api.platform.database.types import utcnow
from todo_api.platform.database.updates import flag_parameters, flagged_values, versioned
from todo_api.platform.database.versions import versions_match, versions_parameter
from todo_api.platform.http.conditional import allows, stale_or_missing, unless_stale
from todo_api.platform.http.problems import QuotaExceeded
from todo_api.platform.positions import MAX_LENGTH, tail
from todo_api.tables.changes import feed_page, next_change_seq, stamped
from todo_api.tables.lists import inbox_id, lists
from todo_api.tables.tasks import tasks
from todo_api.tables.users import users
from todo_api.tasks.ordering import NOBODY, TASK_ORDER, list_scope
from todo_api.users.repository import owner_parameters, provision

_OWNER = lists.c.user_id == sa.bindparam("owner_id", type_=lists.c.user_id.type)
_THIS = lists.c.id == sa.bindparam("list_id", type_=lists.c.id.type)
_IN_LIST = (tasks.c.user_id == lists.c.user_id, tasks.c.list_id == lists.c.id)
_COLUMNS = (
    lists.c.id,
    lists.c.name,
    lists.c.color,
    lists.c.position,
    lists.c.is_inbox,
    sa.select(sa.func.count()).where(*_IN_LIST).scalar_subquery().label("task_count"),
    sa.select(sa.func.count())
    .where(*_IN_LIST, tasks.c.completed.is_(False))
    .scalar_subquery()
    .label("open_task_count"),
    lists.c.created_at,
    lists.c.updated_at,
    lists.c.version,
    lists.c.change_seq,
)
_ALL = sa.select(*_COLUMNS).where(_OWNER).order_by(lists.c.position)
_ONE = sa.select(*_COLUMNS).where(_OWNER, _THIS)
_LOCK_USER = (
    sa.select(users.c.id)
    .where(users.c.id == sa.bindparam("owner_id", type_=users.c.id.type))
    .with_for_update(key_share=True)
)
_COUNT = sa.select(sa.func.count()).select_from(lists).where(_OWNER)
_NEW: dict[str, sa.ColumnElement[Any]] = {
    column.name: sa.bindparam(f"new_{column.name}", type_=column.type) for column in lists.columns
} | {"change_seq": next_change_seq(sa.bindparam("new_user_id", type_=lists.c.user_id.type))}
_INSERT = sa.insert(lists).values(_NEW)
_ORDER = Ordering(lists, (lists.c.user_id,), stamped(lists)).statements()
_FIELDS = {"name": ("name",), "color": ("color",)}


def _read(row: Sequence[Any]) -> ListRead:
    return ListRead(*row)


def scope(user_id: str) -> dict[str, Any]:
    return {"scope_user_id": user_id}


async def lock_user(session: Session, user_id: str) -> None:
    """Serialise this user's list changes (PostgreSQL; SQLite's transactions already are)."""
    await session.rows(_LOCK_USER, {"owner_id": user_id})


async def all_lists(db: Database, *, user_id: str, email: str | None = None) -> list[ListRead]:
    parameters = {"owner_id": user_id}
    rows = await db.rows(_ALL, parameters, idempotent=True)
    if not rows:  # a user's first request: the inbox is made on first use
        await _provision(db, user_id, email)
        rows = await db.rows(_ALL, parameters, idempotent=True)
    return [_read(row) for row in rows]


async def _provision(db: Database, user_id: str, email: str | None) -> None:
    parameters = owner_parameters(user_id, utcnow(), email)

    async def work(session: Session) -> None:
        await provision(session, db.dialect, parameters)

    await db.transaction(work, idempotent=True)


async def get_list(
    db: Database, *, user_id: str, list_id: uuid.UUID, email: str | None = None
) -> ListRead | None:
    parameters = {"owner_id": user_id, "list_id": list_id}
    rows = await db.rows(_ONE, parameters, idempotent=True)
    if not rows and list_id == inbox_id(user_id):
        await _provision(db, user_id, email)
        rows = await db.rows(_ONE, parameters, idempotent=True)
    return _read(rows[0]) if rows else None


async def create_list(
    db: Database,
    *,
    user_id: str,
    name: str,
    color: str | None,
    limit: int,
    email: str | None = None,
) -> ListRead:
    now = utcnow()
    new_id = uuid.uuid4()

    async def work(session: Session) -> None:
        parameters = owner_parameters(user_id, now, email)
        await provision(session, db.dialect, parameters)
        await lock_user(session, user_id)
        [(count,)] = await session.rows(_COUNT, parameters)
        if count >= limit:
            raise QuotaExceeded("lists", limit)
        last = await last_key(session, _ORDER, scope(user_id), moving_id=new_id)
        row = {
            "user_id": user_id,
            "id": new_id,
            "name": name,
            "color": color,
            "position": tail(now, last),
            "is_inbox": False,
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }
        await session.rows(_INSERT, {f"new_{name}": value for name, value in row.items()})

    await db.transaction(work, idempotent=True)
    created = await get_list(db, user_id=user_id, list_id=new_id)
    assert created is not None
    return created


@functools.cache
def _update(dialect: str, *, guarded: bool) -> sa.Update:
    values = flagged_values(lists, _FIELDS) | versioned(lists) | stamped(lists)
    statement = sa.update(lists).values(values).where(_OWNER, _THIS)
    if guarded:
        statement = statement.where(versions_match(lists.c.version, dialect))
    return statement.returning(*_COLUMNS)


async def _stale_or_missing(
    db: Database, user_id: str, list_id: uuid.UUID, if_match: Sequence[int] | None
) -> None:
    read = functools.partial(get_list, db, user_id=user_id, list_id=list_id)
    await stale_or_missing(read, if_match, "list")


async def update_list(
    db: Database,
    *,
    user_id: str,
    list_id: uuid.UUID,
    changes: dict[str, Any],
    if_match: Sequence[int] | None = None,
) -> ListRead | None:
    if not changes:
        return unless_stale(await get_list(db, user_id=user_id, list_id=list_id), if_match, "list")
    parameters: dict[str, Any] = {"owner_id": user_id, "list_id": list_id, "now": utcnow()}
    parameters |= flag_parameters(_FIELDS, changes, changes)
    if if_match is not None:
        parameters["versions"] = versions_parameter(if_match, db.dialect)
    statement = _update(db.dialect, guarded=if_match is not None)
    rows = await db.rows(statement, parameters, idempotent=False)
    if not rows:
        if list_id == inbox_id(user_id):  # not provisioned yet: make it, then change it
            await _provision(db, user_id, None)
            rows = await db.rows(statement, parameters, idempotent=False)
        if not rows:
            await _stale_or_missing(db, user_id, list_id, if_match)
    return _read(rows[0]) if rows else None


# --- move and delete ---------------------------------------------------------------------------

_SET_POSITION = (
    sa.update(lists)
    .where(_OWNER, _THIS)
    .values(
        position=sa.bindparam("position", type_=lists.c.position.type),
        updated_at=sa.bindparam("now", type_=lists.c.updated_at.type),
        version=lists.c.version + 1,
        **stamped(lists),
    )
    .returning(lists.c.id)
)
_EXISTS = sa.select(lists.c.version, lists.c.is_inbox).where(_OWNER, _THIS)


async def move_list(
    db: Database,
    *,
    user_id: str,
    list_id: uuid.UUID,
    after_id: uuid.UUID | None,
    before_id: uuid.UUID | None,
    if_match: Sequence[int] | None = None,
    email: str | None = None,
) -> ListRead | None:
    """Raises AnchorNotFound (from `place`) when the anchor is not one of the user's lists."""
    now = utcnow()

    async def work(session: Session) -> bool:
        # A user's first request may be moving the inbox: it exists from then on.
        await provision(session, db.dialect, owner_parameters(user_id, now, email))
        await lock_user(session, user_id)
        parameters = {"owner_id": user_id, "list_id": list_id}
        found = await session.rows(_EXISTS, parameters)
        if not found:
            return False
        if not allows(if_match, found[0][0]):
            return False
        position = await place(
            session,
            _ORDER,
            scope(user_id),
            moving_id=list_id,
            after_id=after_id,
            before_id=before_id,
            now=now,
        )
        await session.rows(_SET_POSITION, parameters | {"position": position, "now": now})
        return True

    if not await db.transaction(work, idempotent=False):
        await _stale_or_missing(db, user_id, list_id, if_match)
        return None
    return await get_list(db, user_id=user_id, list_id=list_id)


_DELETE = sa.delete(lists).where(_OWNER, _THIS, lists.c.is_inbox.is_(False))
_TASKS_OF = (tasks.c.user_id == sa.bindparam("owner_id", type_=tasks.c.user_id.type),)
_LONGEST = sa.select(sa.func.max(sa.func.length(tasks.c.position))).where(
    *_TASKS_OF, tasks.c.list_id == sa.bindparam("to_list", type_=tasks.c.list_id.type)
)


def _move_all_tasks() -> sa.Update:
    # After the destination's last task, in their order: `prefix` (a tail key, greater than
    # every key there) + each task's own key, unique because those were.
    prefix = sa.bindparam("prefix", type_=tasks.c.position.type)
    return (
        sa.update(tasks)
        .where(*_TASKS_OF, tasks.c.list_id == sa.bindparam("from_list", type_=tasks.c.list_id.type))
        .values(
            list_id=sa.bindparam("to_list", type_=tasks.c.list_id.type),
            position=prefix + tasks.c.position,
            updated_at=sa.bindparam("now", type_=tasks.c.updated_at.type),
            version=tasks.c.version + 1,
            **stamped(tasks),
        )
    )


_MOVE_ALL_TASKS = _move_all_tasks()


async def delete_list(
    db: Database,
    *,
    user_id: str,
    list_id: uuid.UUID,
    move_to: uuid.UUID | None,
    if_match: Sequence[int] | None = None,
) -> bool:
    """Delete the list and its tasks, or first move its tasks to the end of `move_to`.
    Raises InboxNotDeletable, ListNotFound (for `move_to`)."""
    now = utcnow()

    async def work(session: Session) -> bool:
        await lock_user(session, user_id)
        parameters = {"owner_id": user_id, "list_id": list_id}
        found = await session.rows(_EXISTS, parameters)
        if not found and list_id == inbox_id(user_id):  # a user not provisioned yet
            raise InboxNotDeletable()
        if not found:
            return False
        version, is_inbox = found[0]
        if is_inbox:
            raise InboxNotDeletable()
        if not allows(if_match, version):
            return False
        if move_to is not None:
            if not await session.rows(_EXISTS, {"owner_id": user_id, "list_id": move_to}):
                raise ListNotFound(move_to)
            destination = list_scope(user_id, move_to)
            last = await last_key(session, TASK_ORDER, destination, moving_id=NOBODY)
            moved = {"owner_id": user_id, "from_list": list_id, "to_list": move_to, "now": now}
            await session.rows(_MOVE_ALL_TASKS, moved | {"prefix": tail(now, last)})
            [(longest,)] = await session.rows(_LONGEST, moved)
            if longest is not None and longest > MAX_LENGTH:
                await session.rows(TASK_ORDER.park, destination | {"now": now})
                await session.rows(TASK_ORDER.spread, destination | {"now": now})
        await session.rows(_DELETE, parameters)
        return True

    deleted = bool(await db.transaction(work, idempotent=False))
    if not deleted:
        await _stale_or_missing(db, user_id, list_id, if_match)
    return deleted


_CHANGED = feed_page(lists, *_COLUMNS)


async def changed_lists(session: Session, position: Mapping[str, Any]) -> list[ListRead]:
    """A page of the user's lists after a feed position (`tables.changes.feed_page`)."""
    return [_read(row) for row in await session.rows(_CHANGED, position)]
