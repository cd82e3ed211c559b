"""Every query on labels. Each takes the owner's `user_id` and filters by it in SQL; labels are
keyed by `(user_id, id)`, so another user's label is simply not found.

Names are unique per user as `name_key` (the name folded: NFKC, then casefold), refused
twice by the UNIQUE (user_id, name_key) constraint: no "does it exist?" read can race.
"""

from __future__ import annotations

import functools
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from todo_api.labels.errors import LabelNameTaken
from todo_api.labels.schemas import LabelRead
from todo_api.lists.repository import lock_user
from todo_api.platform.database.database import Database
from todo_api.platform.database.errors import DatabaseError, Failure
from todo_api.platform.database.executors import Rows, Session
from todo_api.platform.database.types import utcnow
from todo_api.platform.database.updates import flag_parameters, flagged_values, versioned
from todo_api.platform.database.versions import versions_match, versions_parameter
from todo_api.platform.http.conditional import allows, stale_or_missing, unless_stale
from todo_api.platform.http.problems import QuotaExceeded
from todo_api.tables.changes import feed_page, next_change_seq, stamped
from todo_api.tables.labels import labels, task_labels
from todo_api.tables.tasks import tasks
from todo_api.users.repository import owner_parameters, provision

_OWNER = labels.c.user_id == sa.bindparam("owner_id", type_=labels.c.user_id.type)
_THIS = labels.c.id == sa.bindparam("label_id", type_=labels.c.id.type)
_KEY = labels.c.name_key == sa.bindparam("name_key", type_=labels.c.name_key.type)
_COLUMNS = (
    labels.c.id,
    labels.c.name,
    labels.c.color,
    labels.c.created_at,
    labels.c.updated_at,
    labels.c.version,
    labels.c.change_seq,
)
_FIELDS = tuple(column.name for column in _COLUMNS)
_ONE = sa.select(*_COLUMNS).where(_OWNER, _THIS)
_NAMED = sa.select(*_COLUMNS).where(_OWNER, _KEY)
_COUNT = sa.select(sa.func.count()).select_from(labels).where(_OWNER)
_NEW: dict[str, sa.ColumnElement[Any]] = {
    column.name: sa.bindparam(f"new_{column.name}", type_=column.type) for column in labels.columns
} | {"change_seq": next_change_seq(sa.bindparam("new_user_id", type_=labels.c.user_id.type))}
_INSERT = sa.insert(labels).values(_NEW).returning(*_COLUMNS)


def name_key(name: str) -> str:
    """What makes two names one: `Work`, `work` and a full-width `WORK` fold alike."""
    return unicodedata.normalize("NFKC", name).casefold()


def _read(row: Sequence[Any]) -> LabelRead:
    # Values straight from the columns: nothing to validate a second time.
    return LabelRead.model_construct(**dict(zip(_FIELDS, row, strict=True)))


@functools.cache
def _all(dialect: str) -> sa.Select[Any]:
    # Code-point order on both databases: PostgreSQL's default collation would order
    # differently from SQLite's BINARY one.
    key: sa.ColumnElement[str] = labels.c.name_key
    if dialect == "postgresql":
        key = key.collate("C")
    return sa.select(*_COLUMNS).where(_OWNER).order_by(key)


async def all_labels(db: Database, *, user_id: str) -> list[LabelRead]:
    rows = await db.rows(_all(db.dialect), {"owner_id": user_id}, idempotent=True)
    return [_read(row) for row in rows]


async def get_label(db: Database, *, user_id: str, label_id: uuid.UUID) -> LabelRead | None:
    rows = await db.rows(_ONE, {"owner_id": user_id, "label_id": label_id}, idempotent=True)
    return _read(rows[0]) if rows else None


async def _holder(db: Database, user_id: str, name: str) -> LabelRead | None:
    """The label whose name `name` folds to, if any (read only after a refused write)."""
    rows = await db.rows(_NAMED, {"owner_id": user_id, "name_key": name_key(name)}, idempotent=True)
    return _read(rows[0]) if rows else None


async def create_label(
    db: Database,
    *,
    user_id: str,
    name: str,
    color: str | None,
    limit: int,
    email: str | None = None,
) -> LabelRead:
    """Raises QuotaExceeded, LabelNameTaken."""
    now = utcnow()
    row = {
        "user_id": user_id,
        "id": uuid.uuid4(),
        "name": name,
        "name_key": name_key(name),
        "color": color,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    parameters = owner_parameters(user_id, now, email)

    async def work(session: Session) -> LabelRead:
        await provision(session, db.dialect, parameters)
        # Serialises the user's creates, so the count below is still true at the insert.
        await lock_user(session, user_id)
        [(count,)] = await session.rows(_COUNT, parameters)
        if count >= limit:
            raise QuotaExceeded("labels", limit)
        [created] = await session.rows(_INSERT, {f"new_{key}": value for key, value in row.items()})
        return _read(created)

    try:
        # Idempotent: a retry inserts the same id, which cannot be stored twice.
        return await db.transaction(work, idempotent=True)
    except DatabaseError as error:
        if error.failure is not Failure.INTEGRITY:
            raise
        holder = await _holder(db, user_id, name)
        if holder is not None and holder.id == row["id"]:
            return holder  # a retry after a lost connection met the first attempt's commit
        raise LabelNameTaken(holder.name if holder else name) from error


# A new name sets its folded key too.
_WRITABLE = {"name": ("name", "name_key"), "color": ("color",)}


@functools.cache
def _update(dialect: str, *, guarded: bool) -> sa.Update:
    # One statement text whichever fields change: each is set only when its flag is.
    values = flagged_values(labels, _WRITABLE) | versioned(labels) | stamped(labels)
    statement = sa.update(labels).values(values).where(_OWNER, _THIS)
    if guarded:
        statement = statement.where(versions_match(labels.c.version, dialect))
    return statement.returning(*_COLUMNS)


async def _stale_or_missing(
    db: Database, user_id: str, label_id: uuid.UUID, if_match: Sequence[int] | None
) -> None:
    read = functools.partial(get_label, db, user_id=user_id, label_id=label_id)
    await stale_or_missing(read, if_match, "label")


async def update_label(
    db: Database,
    *,
    user_id: str,
    label_id: uuid.UUID,
    changes: dict[str, Any],
    if_match: Sequence[int] | None = None,
) -> LabelRead | None:
    """Raises StaleVersion, LabelNameTaken."""
    if not changes:
        current = await get_label(db, user_id=user_id, label_id=label_id)
        return unless_stale(current, if_match, "label")
    if "name" in changes:
        changes = changes | {"name_key": name_key(changes["name"])}
    parameters: dict[str, Any] = {"owner_id": user_id, "label_id": label_id, "now": utcnow()}
    parameters |= flag_parameters(_WRITABLE, changes, changes)
    if if_match is not None:
        parameters["versions"] = versions_parameter(if_match, db.dialect)
    statement = _update(db.dialect, guarded=if_match is not None)

    async def work(session: Session) -> Rows:
        # Tasks show their labels' names and colours: the ones carrying it change too (a new
        # version and change_seq), in the same transaction, so /sync sends them.
        updated = await session.rows(statement, parameters)
        if updated:
            await session.rows(_TOUCH_CARRIERS, parameters)
        return updated

    try:
        rows = await db.transaction(work, idempotent=False)
    except DatabaseError as error:
        if error.failure is not Failure.INTEGRITY or "name" not in changes:
            raise
        holder = await _holder(db, user_id, changes["name"])
        raise LabelNameTaken(holder.name if holder else changes["name"]) from error
    if not rows:
        await _stale_or_missing(db, user_id, label_id, if_match)
    return _read(rows[0]) if rows else None


# --- delete ------------------------------------------------------------------------------------

_LOCK = sa.select(labels.c.version).where(_OWNER, _THIS).with_for_update()
_TASK_OWNER = tasks.c.user_id == sa.bindparam("owner_id", type_=tasks.c.user_id.type)
_CARRIERS = sa.select(task_labels.c.task_id).where(
    task_labels.c.user_id == sa.bindparam("owner_id", type_=task_labels.c.user_id.type),
    task_labels.c.label_id == sa.bindparam("label_id", type_=task_labels.c.label_id.type),
)
# A task's representation lists its labels: losing one is a change to the task.
_TOUCH_CARRIERS = (
    sa.update(tasks)
    .where(_TASK_OWNER, tasks.c.id.in_(_CARRIERS))
    .values(
        version=tasks.c.version + 1,
        updated_at=sa.bindparam("now", type_=tasks.c.updated_at.type),
        **stamped(tasks),
    )
)
# ON DELETE CASCADE takes the label off its tasks (task_labels) in the same statement.
_DELETE = sa.delete(labels).where(_OWNER, _THIS)


async def delete_label(
    db: Database, *, user_id: str, label_id: uuid.UUID, if_match: Sequence[int] | None = None
) -> bool:
    """Whether it was deleted. Raises StaleVersion."""
    now = utcnow()
    parameters = {"owner_id": user_id, "label_id": label_id, "now": now}

    async def work(session: Session) -> bool:
        # Locked (PostgreSQL; SQLite's transaction already is exclusive): the version check
        # holds until the delete, and a concurrent labelling of a task waits for this one.
        found = await session.rows(_LOCK, parameters)
        if not found or not allows(if_match, found[0][0]):
            return False
        await session.rows(_TOUCH_CARRIERS, parameters)
        await session.rows(_DELETE, parameters)
        return True

    deleted = bool(await db.transaction(work, idempotent=False))
    if not deleted:
        await _stale_or_missing(db, user_id, label_id, if_match)
    return deleted


_CHANGED = feed_page(labels, *_COLUMNS)


async def changed_labels(session: Session, position: Mapping[str, Any]) -> list[LabelRead]:
    """A page of the user's labels after a feed position (`tables.changes.feed_page`)."""
    return [_read(row) for row in await session.rows(_CHANGED, position)]
