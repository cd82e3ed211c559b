"""Every query on tasks: plain async functions over the app's `Database`.

Rules each function keeps:
- it takes the owner's `user_id` and filters by it in SQL, so a task of another user behaves
  exactly like a task that does not exist;
- it is one unit of work on one pooled connection, held only while it runs, and a write is
  durable before the function returns (so before the route answers);
- changes are single statements with RETURNING: no read-then-write in Python, so concurrent
  requests cannot lose each other's updates, and each write costs one round trip. An If-Match
  version check is part of the same UPDATE/DELETE, so it cannot race either.

Statements are SQLAlchemy Core on the SQLModel tables, built once (at import, or once per
shape by a cached builder whose shapes are bounded by construction: `listing_shapes`).
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.dml import ReturningDelete

from todo_api.platform.database.database import Database
from todo_api.platform.database.executors import Session
from todo_api.platform.database.types import utcnow
from todo_api.platform.http.cursor import Cursor
from todo_api.tables.idempotency_keys import idempotency_keys
from todo_api.tables.tasks import TaskFields, tasks
from todo_api.tasks.errors import IdempotencyKeyReused, StaleVersion
from todo_api.tasks.filters import CONDITIONS, TaskFilter
from todo_api.tasks.schemas import READ_FIELDS, TASK_JSON, TaskCreate, TaskRead
from todo_api.tasks.sorting import DEFAULT_SORT, TaskSort, TaskSortField
from todo_api.users.repository import ensure_user, insert

# Every statement that returns tasks selects these, in TaskRead's field order.
_TASK_COLUMNS = tuple(tasks.c[name] for name in READ_FIELDS)
_WRITABLE = tuple(TaskFields.model_fields)


@dataclass(frozen=True)
class Page:
    items: list[TaskRead]
    next_cursor: Cursor[TaskSortField] | None
    total: int | None = None


@dataclass(frozen=True)
class Stats:
    total: int
    completed: int

    @property
    def pending(self) -> int:
        return self.total - self.completed


def _to_task(row: Sequence[Any]) -> TaskRead:
    # Rows come from our own table through typed columns: no second validation needed.
    return TaskRead(*row)


def _one_task(rows: Sequence[Sequence[Any]]) -> TaskRead | None:
    return _to_task(rows[0]) if rows else None


# --- statements --------------------------------------------------------------------------------

_OWNER = tasks.c.user_id == sa.bindparam("owner_id", type_=tasks.c.user_id.type)
_OWNED = (tasks.c.id == sa.bindparam("task_id", type_=tasks.c.id.type), _OWNER)
_GET = sa.select(*_TASK_COLUMNS).where(*_OWNED)
_STATS = sa.select(sa.func.count(), sa.func.count().filter(tasks.c.completed.is_(True))).where(
    _OWNER
)
_DELETE_ALL = (
    sa.delete(tasks)
    .where(_OWNER, tasks.c.completed == sa.bindparam("done", type_=sa.Boolean))
    .returning(tasks.c.id)
)
_NEW_TASK: dict[str, sa.BindParameter[Any]] = {
    column.name: sa.bindparam(f"new_{column.name}", type_=column.type) for column in _TASK_COLUMNS
}


def _versions_match(dialect: str) -> sa.ColumnElement[bool]:
    """If-Match inside the statement: on PostgreSQL `version = ANY(…)` with one parameter (one
    statement text however many tags); an expanding IN on SQLite.

    The versions travel as text ("3,5") turned into an int[] by the server: an int[] parameter
    makes asyncpg look the array type up on each new connection first (8 round trips,
    measured), on the request that happens to use it."""
    if dialect == "postgresql":
        versions = sa.cast(
            sa.func.string_to_array(sa.bindparam("versions", type_=sa.Text), ","),
            postgresql.ARRAY(sa.Integer),
        )
        matches: sa.ColumnElement[bool] = tasks.c.version == sa.any_(versions)
    else:
        matches = tasks.c.version.in_(sa.bindparam("versions", expanding=True))
    return matches


@functools.cache
def _delete(dialect: str, *, guarded: bool) -> ReturningDelete[Any]:
    statement = sa.delete(tasks).where(*_OWNED).returning(tasks.c.id)
    return statement.where(_versions_match(dialect)) if guarded else statement


@functools.cache
def _insert_task(dialect: str) -> sa.Insert:
    # ON CONFLICT (id) DO NOTHING: the id is chosen here, so a retry after a lost connection
    # finds the row it already wrote and leaves it alone instead of failing or doubling it.
    statement: sa.Insert = (
        insert(dialect, tasks).values(_NEW_TASK).on_conflict_do_nothing(index_elements=["id"])
    )
    return statement


@functools.cache
def _create_in_one_statement(*, with_email: bool) -> sa.Insert:
    # PostgreSQL: the user upsert as a CTE of the task INSERT, atomic on its own, one round trip.
    provisioned = ensure_user("postgresql", with_email=with_email).cte("provisioned")
    return _insert_task("postgresql").add_cte(provisioned).returning(tasks.c.id)


@functools.cache
def _update(dialect: str, *, toggle: bool, guarded: bool) -> sa.Update:
    """UPDATE of one owned task, RETURNING it. Each writable field is set only when its
    `set_<field>` flag is true, so one statement serves every PATCH and PUT (instead of one
    per subset of fields: 2^n shapes); updated_at and version always change."""
    values: dict[str, Any] = {
        name: sa.case(
            (
                sa.bindparam(f"set_{name}", type_=sa.Boolean),
                sa.bindparam(f"value_{name}", type_=tasks.c[name].type),
            ),
            else_=tasks.c[name],
        )
        for name in _WRITABLE
    }
    if toggle:
        # In the UPDATE itself, so fifty concurrent toggles flip fifty times instead of racing
        # on a value read earlier.
        values["completed"] = sa.not_(tasks.c.completed)
    now = sa.bindparam("now", type_=tasks.c.updated_at.type)
    # On the right of SET, columns are the row's values before this UPDATE.
    completed = values["completed"]
    values |= {
        "completed_at": sa.case(
            (sa.and_(completed, sa.not_(tasks.c.completed)), now),
            (completed, tasks.c.completed_at),
            else_=sa.null(),
        ),
        "updated_at": now,
        "version": tasks.c.version + 1,
    }
    statement = sa.update(tasks).values(values).where(*_OWNED)
    if guarded:
        statement = statement.where(_versions_match(dialect))
    return statement.returning(*_TASK_COLUMNS)


@dataclass(frozen=True)
class ListingShape:
    sort: TaskSort
    # None: the first page; "value" or "null": after a cursor whose key is a value or NULL
    # (only nullable sort keys have the second).
    after: str | None


def listing_shapes() -> Iterator[ListingShape]:
    """Every listing statement there can be: sorts x (first page, after a cursor[, after a
    NULL key]). Filters add none (see `filters`); `include_total` adds one COUNT."""
    for field in TaskSortField:
        for descending in (False, True):
            sort = TaskSort(field, descending)
            yield ListingShape(sort, None)
            yield ListingShape(sort, "value")
            if field.value.nullable:
                yield ListingShape(sort, "null")


@functools.cache
def _page(shape: ListingShape) -> sa.Select[Any]:
    """The listing query for one shape. NULL keys sort last ascending and first descending."""
    sort = shape.sort
    column = tasks.c[sort.name]
    conditions: list[sa.ColumnElement[bool]] = [_OWNER, *CONDITIONS]
    if shape.after == "null":
        after_id = sa.bindparam("after_id", type_=tasks.c.id.type)
        if sort.descending:
            conditions.append(
                sa.or_(column.is_not(None), sa.and_(column.is_(None), tasks.c.id < after_id))
            )
        else:
            conditions.append(sa.and_(column.is_(None), tasks.c.id > after_id))
    elif shape.after == "value":
        position = sa.tuple_(column, tasks.c.id)
        boundary = sa.tuple_(
            sa.bindparam("after_key", type_=column.type),
            sa.bindparam("after_id", type_=tasks.c.id.type),
        )
        condition = position < boundary if sort.descending else position > boundary
        if sort.key.nullable and not sort.descending:
            condition = sa.or_(condition, column.is_(None))
        conditions.append(condition)
    order: list[sa.ColumnElement[Any]]
    if sort.descending:
        order = [column.desc(), tasks.c.id.desc()]
        if sort.key.nullable:
            order[0] = column.desc().nulls_first()
    else:
        order = [column, tasks.c.id]
        if sort.key.nullable:
            order[0] = column.asc().nulls_last()
    return sa.select(*_TASK_COLUMNS).where(*conditions).order_by(*order).limit(sa.bindparam("n"))


_COUNT = sa.select(sa.func.count()).select_from(tasks).where(_OWNER, *CONDITIONS)


# --- create ------------------------------------------------------------------------------------


def _new_task(user_id: str, data: TaskCreate) -> TaskRead:
    # Everything about a new task is decided here, so its representation is known before the
    # INSERT (the idempotency record stores it in the same statement).
    now = utcnow()
    fields = {name: getattr(data, name) for name in _WRITABLE}
    return TaskRead(
        id=uuid.uuid4(),
        user_id=user_id,
        completed_at=now if data.completed else None,
        created_at=now,
        updated_at=now,
        version=1,
        **fields,
    )


def _task_parameters(task: TaskRead, email: str | None) -> dict[str, Any]:
    parameters = {f"new_{name}": getattr(task, name) for name in _NEW_TASK}
    return parameters | {"owner_id": task.user_id, "now": task.created_at, "owner_email": email}


async def create_task(
    db: Database, *, user_id: str, data: TaskCreate, email: str | None = None
) -> TaskRead:
    task = _new_task(user_id, data)
    parameters = _task_parameters(task, email)
    with_email = email is not None
    if db.dialect == "postgresql":
        statement = _create_in_one_statement(with_email=with_email)
        await db.rows(statement, parameters, idempotent=True)
        return task

    async def work(session: Session) -> None:  # SQLite has no INSERT inside WITH
        await session.rows(ensure_user(db.dialect, with_email=with_email), parameters)
        await session.rows(_insert_task(db.dialect), parameters)

    await db.transaction(work, idempotent=True)
    return task


def request_fingerprint(data: TaskCreate) -> str:
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


_KEY_COLUMNS = {
    name: sa.bindparam(f"key_{name}", type_=idempotency_keys.c[name].type)
    for name in ("user_id", "key", "request_hash", "response_body", "created_at", "expires_at")
}
_KEY_OWNER = idempotency_keys.c.user_id == sa.bindparam(
    "key_user_id", type_=idempotency_keys.c.user_id.type
)
_THIS_KEY = idempotency_keys.c.key == sa.bindparam("key_key", type_=idempotency_keys.c.key.type)
_EXPIRED = idempotency_keys.c.expires_at <= sa.bindparam(
    "key_created_at", type_=idempotency_keys.c.expires_at.type
)
_PREVIOUS = sa.select(idempotency_keys.c.request_hash, idempotency_keys.c.response_body).where(
    _KEY_OWNER, _THIS_KEY
)


@functools.cache
def _claim(dialect: str) -> sa.Insert:
    """Claim the key: a new row, or the row of an expired claim of the same key, taken over.
    No row back: the key is held by a live claim (whose transaction, if still open, was
    waited for)."""
    statement = insert(dialect, idempotency_keys).values(_KEY_COLUMNS)
    takeover = {
        name: getattr(statement.excluded, name)
        for name in ("request_hash", "response_body", "created_at", "expires_at")
    }
    claim: sa.Insert = statement.on_conflict_do_update(
        index_elements=[idempotency_keys.c.user_id, idempotency_keys.c.key],
        set_=takeover,
        where=idempotency_keys.c.expires_at <= statement.excluded.created_at,
    ).returning(idempotency_keys.c.key)
    return claim


@functools.cache
def _expire(dialect: str) -> sa.Delete:
    # The user's other expired keys go when the user next makes a keyed create.
    return sa.delete(idempotency_keys).where(_KEY_OWNER, _EXPIRED, ~_THIS_KEY)


@functools.cache
def _keyed_create_in_one_statement(*, with_email: bool) -> sa.Select[Any]:
    """PostgreSQL: provision the user, drop their expired keys, claim the key and, only when
    the claim succeeded, insert the task; one statement, atomic on its own, one round trip.
    Returns whether the key was claimed (false: it is held by an earlier request)."""
    provisioned = ensure_user("postgresql", with_email=with_email).cte("provisioned")
    expired = _expire("postgresql").cte("expired")
    claimed = _claim("postgresql").cte("claimed")
    columns = [_NEW_TASK[column.name].label(column.name) for column in _TASK_COLUMNS]
    new_task = (
        postgresql.insert(tasks)
        .from_select(
            [column.name for column in _TASK_COLUMNS],
            sa.select(*columns).where(sa.exists(sa.select(claimed.c.key))),
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(tasks.c.id)
        .cte("new_task")
    )
    return sa.select(sa.exists(sa.select(claimed.c.key)).label("claimed")).add_cte(
        provisioned, expired, claimed, new_task
    )


def _key_parameters(task: TaskRead, key: str, fingerprint: str, ttl: timedelta) -> dict[str, Any]:
    now = task.created_at
    return {
        "key_user_id": task.user_id,
        "key_key": key,
        "key_request_hash": fingerprint,
        "key_response_body": TASK_JSON.dump_json(task).decode(),
        "key_created_at": now,
        "key_expires_at": now + ttl,
    }


async def create_task_once(
    db: Database,
    *,
    user_id: str,
    data: TaskCreate,
    key: str,
    ttl: timedelta,
    email: str | None = None,
) -> tuple[TaskRead, bool]:
    """Create a task under an Idempotency-Key; (task, replayed).

    The key is claimed with INSERT … ON CONFLICT together with the task: a concurrent request
    with the same key waits on the claim (PostgreSQL) or the write lock (SQLite), then finds
    the stored response. A claim past its expiry is taken over. Idempotent by construction:
    run again after a commit whose answer was lost, it finds its own claim and replays it.
    """
    fingerprint = request_fingerprint(data)
    task = _new_task(user_id, data)
    with_email = email is not None
    parameters = _task_parameters(task, email) | _key_parameters(task, key, fingerprint, ttl)
    if db.dialect == "postgresql":
        statement = _keyed_create_in_one_statement(with_email=with_email)
        [(claimed,)] = await db.rows(statement, parameters, idempotent=True)
        stored = None if claimed else await db.rows(_PREVIOUS, parameters, idempotent=True)
    else:

        async def work(session: Session) -> Sequence[Sequence[Any]] | None:
            await session.rows(ensure_user(db.dialect, with_email=with_email), parameters)
            await session.rows(_expire(db.dialect), parameters)
            if not await session.rows(_claim(db.dialect), parameters):
                return await session.rows(_PREVIOUS, parameters)
            await session.rows(_insert_task(db.dialect), parameters)
            return None

        stored = await db.transaction(work, idempotent=True)
    if not stored:
        return task, False
    request_hash, response_body = stored[0]
    if request_hash != fingerprint:
        raise IdempotencyKeyReused()
    return TASK_JSON.validate_json(response_body), True


# --- read ----------------------------------------------------------------------------------------


async def get_task(db: Database, *, user_id: str, task_id: uuid.UUID) -> TaskRead | None:
    rows = await db.rows(_GET, {"task_id": task_id, "owner_id": user_id}, idempotent=True)
    return _one_task(rows)


async def list_tasks(
    db: Database,
    *,
    user_id: str,
    limit: int,
    sort: TaskSort = DEFAULT_SORT,
    filters: TaskFilter | None = None,
    after: Cursor[TaskSortField] | None = None,
    include_total: bool = False,
) -> Page:
    """One page in the requested order; the cursor points past its last item when more follow.

    Keyset pagination: `(sort key, id)` strictly after the cursor's, so the query stays an index
    range scan however deep the page, and inserts or deletes elsewhere cannot shift it.
    """
    filters = filters or TaskFilter()
    parameters: dict[str, Any] = {
        "owner_id": user_id,
        **filters.parameters(),
        "n": limit + 1,  # one extra row tells whether another page exists, without a COUNT
    }
    position = None
    if after is not None:
        parameters |= {"after_key": after.key, "after_id": after.id}
        position = "null" if after.key is None else "value"
    rows = await db.rows(_page(ListingShape(sort, position)), parameters, idempotent=True)
    items = [_to_task(row) for row in rows[:limit]]
    cursor = None
    if len(rows) > limit:
        last = items[-1]
        key = getattr(last, sort.name)
        cursor = Cursor(sort=sort, scope=filters.fingerprint(), key=key, id=last.id)
    total = None
    if include_total:
        total = int((await db.rows(_COUNT, parameters, idempotent=True))[0][0])
    return Page(items=items, next_cursor=cursor, total=total)


async def task_stats(db: Database, *, user_id: str) -> Stats:
    """Counts in one query (one index range scan of the user's tasks)."""
    counts: Sequence[Any] = (await db.rows(_STATS, {"owner_id": user_id}, idempotent=True))[0]
    return Stats(total=int(counts[0]), completed=int(counts[1]))


# --- change -------------------------------------------------------------------------------------


async def _changed(
    db: Database,
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
        versions = list(if_match)
        parameters["versions"] = (
            ",".join(map(str, versions)) if db.dialect == "postgresql" else versions
        )
    rows = await db.rows(statement, parameters, idempotent=False)
    if not rows and if_match is not None:
        current = await get_task(db, user_id=parameters["owner_id"], task_id=parameters["task_id"])
        if current is not None:
            raise StaleVersion(current)
    return rows


async def _update_one(
    db: Database,
    *,
    user_id: str,
    task_id: uuid.UUID,
    values: Mapping[str, Any],
    toggle: bool = False,
    if_match: Sequence[int] | None,
) -> TaskRead | None:
    statement = _update(db.dialect, toggle=toggle, guarded=if_match is not None)
    parameters: dict[str, Any] = {"task_id": task_id, "owner_id": user_id, "now": utcnow()}
    for name in _WRITABLE:
        parameters[f"set_{name}"] = name in values
        parameters[f"value_{name}"] = values.get(name)
    return _one_task(await _changed(db, statement, parameters, if_match=if_match))


async def replace_task(
    db: Database,
    *,
    user_id: str,
    task_id: uuid.UUID,
    data: TaskCreate,
    if_match: Sequence[int] | None = None,
) -> TaskRead | None:
    return await _update_one(
        db, user_id=user_id, task_id=task_id, values=data.model_dump(), if_match=if_match
    )


async def update_task(
    db: Database,
    *,
    user_id: str,
    task_id: uuid.UUID,
    changes: Mapping[str, Any],
    if_match: Sequence[int] | None = None,
) -> TaskRead | None:
    if not changes:  # nothing to change: not a modification; version and updated_at stay
        task = await get_task(db, user_id=user_id, task_id=task_id)
        if task is not None and if_match is not None and task.version not in if_match:
            raise StaleVersion(task)
        return task
    return await _update_one(
        db, user_id=user_id, task_id=task_id, values=changes, if_match=if_match
    )


async def set_completion(
    db: Database,
    *,
    user_id: str,
    task_id: uuid.UUID,
    completed: bool | None,
    if_match: Sequence[int] | None = None,
) -> TaskRead | None:
    """Set `completed`, or flip it when `completed` is None."""
    values = {} if completed is None else {"completed": completed}
    return await _update_one(
        db, user_id=user_id, task_id=task_id, values=values, toggle=completed is None,
        if_match=if_match,
    )  # fmt: skip


async def delete_task(
    db: Database,
    *,
    user_id: str,
    task_id: uuid.UUID,
    if_match: Sequence[int] | None = None,
) -> bool:
    statement = _delete(db.dialect, guarded=if_match is not None)
    parameters = {"task_id": task_id, "owner_id": user_id}
    return bool(await _changed(db, statement, parameters, if_match=if_match))


async def delete_tasks(db: Database, *, user_id: str, completed: bool) -> int:
    """Delete all of the user's tasks whose `completed` is as given; how many."""
    parameters = {"owner_id": user_id, "done": completed}
    return len(await db.rows(_DELETE_ALL, parameters, idempotent=False))
