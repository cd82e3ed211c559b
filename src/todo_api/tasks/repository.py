"""Every query on tasks: plain async functions over the app's `Database`.

Rules each function keeps:
- it takes the owner's `user_id` and filters by it in SQL, so a task of another user behaves
  exactly like a task that does not exist (lists and labels too: every key includes the
  owner, and the foreign keys make a task in another user's list impossible);
- it is one unit of work on one pooled connection, held only while it runs, and a write is
  durable before the function returns (so before the route answers);
- simple changes are single statements with RETURNING: no read-then-write in Python, so
  concurrent requests cannot lose each other's updates. If-Match is part of the same
  UPDATE/DELETE. Changes that need a read first (labels to check, a place to find among
  other tasks, many tasks at once) are one transaction that locks what it reads.

Statements are SQLAlchemy Core on the SQLModel tables, built once (at import, or once per
shape by a cached builder whose shapes are bounded by construction: `listing_shapes`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from todo_api.platform.database.database import Database
from todo_api.platform.database.errors import DatabaseError, Failure
from todo_api.platform.database.executors import Session
from todo_api.platform.database.ordering import place
from todo_api.platform.database.types import utcnow
from todo_api.platform.database.updates import flag_parameters, flagged_values, versioned
from todo_api.platform.database.versions import versions_match, versions_parameter
from todo_api.platform.http.conditional import allows
from todo_api.platform.http.cursor import Cursor
from todo_api.platform.http.problems import QuotaExceeded
from todo_api.platform.positions import tail
from todo_api.platform.zones import zone
from todo_api.tables.changes import feed_page, next_change_seq, stamped
from todo_api.tables.idempotency_keys import idempotency_keys
from todo_api.tables.labels import labels, task_labels
from todo_api.tables.lists import inbox_id, lists
from todo_api.tables.tasks import tasks
from todo_api.tables.users import users
from todo_api.tasks.errors import (
    IdempotencyKeyReused,
    LabelsNotFound,
    ListNotFound,
    StaleVersion,
    TaskNotFound,
    TasksNotFound,
)
from todo_api.tasks.filters import (
    CONDITIONS,
    TaskFilter,
    id_list_parameter,
    in_id_list,
    overdue,
    overdue_parameters,
    window,
    window_parameters,
)
from todo_api.tasks.ordering import NOBODY, TASK_ORDER, list_scope
from todo_api.tasks.schemas import (
    DUE_COLUMNS,
    INBOX,
    NO_DUE,
    PRIORITY_NUMBER,
    PRIORITY_OF_NUMBER,
    TASK_JSON,
    BulkChange,
    DueColumns,
    DueInput,
    LabelRef,
    TaskCreate,
    TaskRead,
    due_columns,
    due_read,
)
from todo_api.tasks.sorting import DEFAULT_SORT, TaskSort, TaskSortField
from todo_api.users.repository import (
    insert,
    owner_parameters,
    provision,
    provisioning_ctes,
    user_timezone,
)


@dataclass(frozen=True)
class Quotas:
    tasks: int
    labels_per_task: int


# --- the columns of a task ----------------------------------------------------------------------


class task_labels_json(FunctionElement[str]):
    """The task's labels as a JSON array of [id, name, color], by name: built in the query
    that reads the task (a correlated subquery on task_labels' primary key)."""

    type = sa.Text()
    inherit_cache = True


_LABELS_FROM = (
    "FROM task_labels JOIN labels ON labels.user_id = task_labels.user_id "
    "AND labels.id = task_labels.label_id "
    "WHERE task_labels.user_id = tasks.user_id AND task_labels.task_id = tasks.id"
)


@compiles(task_labels_json, "postgresql")
def _labels_postgresql(element: task_labels_json, compiler: Any, **kw: Any) -> str:
    return (
        "(SELECT coalesce(json_agg(json_build_array(labels.id, labels.name, labels.color) "
        f"ORDER BY labels.name_key, labels.id)::text, '[]') {_LABELS_FROM})"
    )


@compiles(task_labels_json)
def _labels_sqlite(element: task_labels_json, compiler: Any, **kw: Any) -> str:
    return (
        "(SELECT json_group_array(json_array(l.id, l.name, l.color)) FROM (SELECT labels.id, "
        f"labels.name, labels.color {_LABELS_FROM} ORDER BY labels.name_key, labels.id) AS l)"
    )


_TASK_COLUMNS: tuple[sa.ColumnElement[Any], ...] = (
    tasks.c.id,
    tasks.c.user_id,
    tasks.c.list_id,
    tasks.c.title,
    tasks.c.description,
    tasks.c.completed,
    tasks.c.completed_at,
    tasks.c.priority,
    tasks.c.due_date,
    tasks.c.due_time,
    tasks.c.due_timezone,
    tasks.c.due_at,
    task_labels_json().label("labels"),
    tasks.c.position,
    tasks.c.created_at,
    tasks.c.updated_at,
    tasks.c.version,
    tasks.c.change_seq,
)


def _label_refs(encoded: str | None) -> list[LabelRef]:
    if not encoded or encoded == "[]":
        return []
    return [LabelRef(uuid.UUID(str(id_)), name, color) for id_, name, color in json.loads(encoded)]


def _to_task(row: Sequence[Any]) -> TaskRead:
    # Rows come from our own table through typed columns: no second validation needed.
    (id_, user_id, list_id, title, description, completed, completed_at, priority, due_date,
     due_time, due_timezone, due_at, encoded_labels, position, created_at, updated_at,
     version, change_seq) = row  # fmt: skip
    refs = _label_refs(encoded_labels)
    return TaskRead(
        id_, user_id, list_id, title, description, completed, completed_at,
        PRIORITY_OF_NUMBER[priority], due_read(due_date, due_time, due_timezone, due_at),
        [ref.id for ref in refs], refs, position, created_at, updated_at, version, change_seq,
    )  # fmt: skip


def _one_task(rows: Sequence[Sequence[Any]]) -> TaskRead | None:
    return _to_task(rows[0]) if rows else None


def sort_key(task: TaskRead, sort: TaskSort) -> Any:
    """The value a task is sorted by (what its cursor carries)."""
    if sort.field is TaskSortField.DUE:
        if task.due is None:
            return None
        wall = task.due.time if task.due.time is not None else time.max
        return datetime.combine(task.due.date, wall, tzinfo=UTC)
    if sort.field is TaskSortField.PRIORITY:
        return PRIORITY_NUMBER[task.priority]
    return getattr(task, sort.name)


# --- statements --------------------------------------------------------------------------------

_OWNER = tasks.c.user_id == sa.bindparam("owner_id", type_=tasks.c.user_id.type)
_OWNED = (tasks.c.id == sa.bindparam("task_id", type_=tasks.c.id.type), _OWNER)
_GET = sa.select(*_TASK_COLUMNS).where(*_OWNED)
_GET_LOCKED = _GET.with_for_update(of=tasks)
_DELETE_ALL = (
    sa.delete(tasks)
    .where(_OWNER, tasks.c.completed == sa.bindparam("done", type_=sa.Boolean))
    .returning(tasks.c.id)
)
_STORED = tuple(column for column in tasks.columns)
_NEW_TASK: dict[str, sa.ColumnElement[Any]] = {
    column.name: sa.bindparam(f"new_{column.name}", type_=column.type) for column in _STORED
} | {"change_seq": next_change_seq(sa.bindparam("new_user_id", type_=tasks.c.user_id.type))}
_LIST_OWNED = (
    lists.c.user_id == sa.bindparam("owner_id", type_=lists.c.user_id.type),
    lists.c.id == sa.bindparam("new_list_id", type_=lists.c.id.type),
)
_LIST_EXISTS = sa.select(lists.c.id).where(*_LIST_OWNED)
# FOR NO KEY UPDATE: concurrent moves into the list take turns, but a create's foreign key
# check (FOR KEY SHARE on the list) is not blocked: a create holds its user's counter row
# first, a move takes it last (the change stamp), and blocking both ways would deadlock.
_LOCK_LIST = _LIST_EXISTS.with_for_update(key_share=True)
_USER_WITHIN_QUOTA = (
    sa.select(users.c.id)
    .where(
        users.c.id == sa.bindparam("owner_id", type_=users.c.id.type),
        users.c.task_count < sa.bindparam("task_quota", type_=sa.Integer),
    )
    # Waits for a concurrent create of this user, then re-reads its count: race-free. NO KEY:
    # the foreign key checks of rows referencing the user (FOR KEY SHARE) need not wait.
    .with_for_update(key_share=True)
)
_TASK_COUNT = sa.select(users.c.task_count).where(
    users.c.id == sa.bindparam("owner_id", type_=users.c.id.type)
)
# Every named task with every named label: a deliberate cross join.
_ADD_LABELS = (
    sa.select(
        sa.bindparam("owner_id", type_=task_labels.c.user_id.type).label("user_id"),
        tasks.c.id.label("task_id"),
        labels.c.id.label("label_id"),
    )
    .select_from(tasks.join(labels, sa.true()))
    .where(
        tasks.c.user_id == sa.bindparam("owner_id", type_=tasks.c.user_id.type),
        in_id_list(tasks.c.id, sa.bindparam("task_ids", type_=sa.Text)),
        labels.c.user_id == sa.bindparam("owner_id", type_=labels.c.user_id.type),
        in_id_list(labels.c.id, sa.bindparam("label_ids", type_=sa.Text)),
    )
)
_THE_TASKS = (
    task_labels.c.user_id == sa.bindparam("owner_id", type_=task_labels.c.user_id.type),
    in_id_list(task_labels.c.task_id, sa.bindparam("task_ids", type_=sa.Text)),
)
_REMOVE_LABELS = sa.delete(task_labels).where(
    *_THE_TASKS, in_id_list(task_labels.c.label_id, sa.bindparam("label_ids", type_=sa.Text))
)
_KEEP_ONLY_LABELS = sa.delete(task_labels).where(
    *_THE_TASKS,
    sa.not_(in_id_list(task_labels.c.label_id, sa.bindparam("label_ids", type_=sa.Text))),
)
_MOST_LABELS = sa.select(sa.func.max(sa.select(sa.func.count()).where(
    task_labels.c.user_id == tasks.c.user_id, task_labels.c.task_id == tasks.c.id
).scalar_subquery())).where(
    tasks.c.user_id == sa.bindparam("owner_id", type_=tasks.c.user_id.type),
    in_id_list(tasks.c.id, sa.bindparam("task_ids", type_=sa.Text)),
)  # fmt: skip
_SOME = sa.select(*_TASK_COLUMNS).where(
    _OWNER, in_id_list(tasks.c.id, sa.bindparam("task_ids", type_=sa.Text))
)


@functools.cache
def _add_labels(dialect: str) -> sa.Insert:
    statement: sa.Insert = (
        insert(dialect, task_labels)
        .from_select(["user_id", "task_id", "label_id"], _ADD_LABELS)
        .on_conflict_do_nothing()
    )
    return statement


def _versions_match(dialect: str) -> sa.ColumnElement[bool]:
    return versions_match(tasks.c.version, dialect)


@functools.cache
def _delete(dialect: str, *, guarded: bool) -> sa.Delete:
    statement = sa.delete(tasks).where(*_OWNED)
    if guarded:
        statement = statement.where(_versions_match(dialect))
    return statement.returning(tasks.c.id)  # type: ignore[return-value]


@functools.cache
def _insert_task(dialect: str) -> sa.Insert:
    # ON CONFLICT (id) DO NOTHING: the id is chosen here, so a retry after a lost connection
    # finds the row it already wrote and leaves it alone instead of failing or doubling it.
    statement: sa.Insert = (
        insert(dialect, tasks)
        .values(_NEW_TASK)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(tasks.c.change_seq)
    )
    return statement


def _with_completion(values: dict[str, Any]) -> dict[str, Any]:
    """`completed_at` follows `completed` (set when it becomes true, cleared when false), and
    every change moves `updated_at` and the version. On the right of SET, columns are the
    row's values before this UPDATE."""
    completed = values["completed"]
    now = sa.bindparam("now", type_=tasks.c.updated_at.type)
    return (
        values
        | versioned(tasks)
        | stamped(tasks)
        | {
            "completed_at": sa.case(
                (sa.and_(completed, sa.not_(tasks.c.completed)), now),
                (completed, tasks.c.completed_at),
                else_=sa.null(),
            ),
        }
    )


# Writable API fields and the columns each one sets (see schemas.TaskInput).
_FIELD_COLUMNS: dict[str, tuple[str, ...]] = {
    "title": ("title",),
    "description": ("description",),
    "completed": ("completed",),
    "priority": ("priority",),
    "due": DUE_COLUMNS,
    "list_id": ("list_id", "position"),
}


@functools.cache
def _update(dialect: str, *, toggle: bool, guarded: bool) -> sa.Update:
    """UPDATE of one owned task, RETURNING it. Each field is set only when its `set_<field>`
    flag is true, so one statement serves every PATCH and PUT (instead of one per subset of
    fields: 2^n shapes); updated_at and version always change."""
    values = flagged_values(tasks, _FIELD_COLUMNS)
    # A task "moved" to its own list stays where it is.
    same_list = tasks.c.list_id == sa.bindparam("value_list_id", type_=tasks.c.list_id.type)
    values["position"] = sa.case(
        (sa.and_(sa.bindparam("set_list_id", type_=sa.Boolean), sa.not_(same_list)),
         sa.bindparam("value_position", type_=tasks.c.position.type)),
        else_=tasks.c.position,
    )  # fmt: skip
    if toggle:
        # In the UPDATE itself, so fifty concurrent toggles flip fifty times instead of racing
        # on a value read earlier.
        values["completed"] = sa.not_(tasks.c.completed)
    values = _with_completion(values)
    statement = sa.update(tasks).values(values).where(*_OWNED)
    if guarded:
        statement = statement.where(_versions_match(dialect))
    return statement.returning(*_TASK_COLUMNS)


# --- listing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    items: list[TaskRead]
    next_cursor: Cursor[TaskSortField] | None
    total: int | None = None


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
    """The listing query for one shape, NULL keys placed as the sort field says."""
    sort = shape.sort
    column = tasks.c[sort.column]
    descending = sort.descending
    nulls_last = sort.key.nullable and sort.key.nulls_last(descending)
    after_id = sa.bindparam("after_id", type_=tasks.c.id.type)
    conditions: list[sa.ColumnElement[bool]] = [_OWNER, *CONDITIONS]
    if shape.after == "null":
        later_id = tasks.c.id < after_id if descending else tasks.c.id > after_id
        null_run = sa.and_(column.is_(None), later_id)
        conditions.append(null_run if nulls_last else sa.or_(column.is_not(None), null_run))
    elif shape.after == "value":
        position = sa.tuple_(column, tasks.c.id)
        boundary = sa.tuple_(sa.bindparam("after_key", type_=column.type), after_id)
        condition = position < boundary if descending else position > boundary
        if sort.key.nullable and nulls_last:
            condition = sa.or_(condition, column.is_(None))
        conditions.append(condition)
    key = column.desc() if descending else column.asc()
    if sort.key.nullable:
        key = key.nulls_last() if nulls_last else key.nulls_first()
    order = [key, tasks.c.id.desc() if descending else tasks.c.id]
    return sa.select(*_TASK_COLUMNS).where(*conditions).order_by(*order).limit(sa.bindparam("n"))


_COUNT = sa.select(sa.func.count()).select_from(tasks).where(_OWNER, *CONDITIONS)


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
    zone_name = "UTC"
    if filters.needs_zone and filters.tz is None:
        zone_name = await user_timezone(db, user_id=user_id)
    parameters: dict[str, Any] = {
        "owner_id": user_id,
        **filters.parameters(db.dialect, zone_name),
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
        cursor = Cursor(
            sort=sort, scope=filters.fingerprint(), key=sort_key(last, sort), id=last.id
        )
    total = None
    if include_total:
        total = int((await db.rows(_COUNT, parameters, idempotent=True))[0][0])
    return Page(items=items, next_cursor=cursor, total=total)


@dataclass(frozen=True)
class Stats:
    total: int
    completed: int
    overdue: int
    due_today: int

    @property
    def pending(self) -> int:
        return self.total - self.completed


_STATS = sa.select(
    sa.func.count(),
    sa.func.count().filter(tasks.c.completed.is_(True)),
    sa.func.count().filter(overdue()),
    sa.func.count().filter(
        tasks.c.completed.is_(False), tasks.c.due_date.is_not(None), window("due")
    ),
).where(_OWNER)


async def task_stats(db: Database, *, user_id: str, now: datetime | None = None) -> Stats:
    """Counts in one query (one index range scan of the user's tasks), in the user's zone."""
    zone_name = await user_timezone(db, user_id=user_id)
    now = now or utcnow()
    today = now.astimezone(zone(zone_name)).date()
    parameters = {
        "owner_id": user_id,
        **overdue_parameters(now, zone_name),
        **window_parameters("due", today, today, zone_name),
    }
    counts: Sequence[Any] = (await db.rows(_STATS, parameters, idempotent=True))[0]
    return Stats(*(int(count) for count in counts))


# --- create ------------------------------------------------------------------------------------


def _stored_values(task: TaskRead, due: DueColumns) -> dict[str, Any]:
    """The row of a task, by column name."""
    return {
        "id": task.id,
        "user_id": task.user_id,
        "list_id": task.list_id,
        "title": task.title,
        "description": task.description,
        "completed": task.completed,
        "completed_at": task.completed_at,
        "priority": PRIORITY_NUMBER[task.priority],
        "position": task.position,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "version": task.version,
        **{name: getattr(due, name) for name in DUE_COLUMNS},
    }


def resolve_list(list_ref: uuid.UUID | str, user_id: str) -> uuid.UUID:
    return inbox_id(user_id) if list_ref == INBOX else uuid.UUID(str(list_ref))


@dataclass(frozen=True)
class NewTask:
    task: TaskRead
    parameters: dict[str, Any]
    into_inbox: bool


def _new_task(
    user_id: str, data: TaskCreate, email: str | None, labels_found: list[LabelRef]
) -> NewTask:
    # Everything about a new task is decided here, so its representation is known before the
    # INSERT (the idempotency record stores it in the same statement).
    now = utcnow()
    list_id = resolve_list(data.list_id, user_id)
    due = due_columns(data.due)
    task = TaskRead(
        id=uuid.uuid4(),
        user_id=user_id,
        list_id=list_id,
        title=data.title,
        description=data.description,
        completed=data.completed,
        completed_at=now if data.completed else None,
        priority=data.priority,
        due=due_read(due.due_date, due.due_time, due.due_timezone, due.due_at),
        label_ids=[label.id for label in labels_found],
        labels=labels_found,
        # The end of the list, from the clock: no read of the list (positions.tail).
        position=tail(now),
        created_at=now,
        updated_at=now,
        version=1,
        change_seq=0,  # the database's: see create_task
    )
    parameters = {f"new_{name}": value for name, value in _stored_values(task, due).items()}
    parameters |= owner_parameters(user_id, now, email)
    return NewTask(task, parameters, into_inbox=list_id == inbox_id(user_id))


_KEY_COLUMNS: dict[str, sa.ColumnElement[Any]] = {
    name: sa.bindparam(f"key_{name}", type_=idempotency_keys.c[name].type)
    for name in ("user_id", "key", "request_hash", "response_body", "created_at", "expires_at")
} | {
    # The create's own value (the claim and the task are one write): a replay reports it.
    "change_seq": next_change_seq(
        sa.bindparam("key_user_id", type_=idempotency_keys.c.user_id.type)
    ),
}
_KEY_OWNER = idempotency_keys.c.user_id == sa.bindparam(
    "key_user_id", type_=idempotency_keys.c.user_id.type
)
_THIS_KEY = idempotency_keys.c.key == sa.bindparam("key_key", type_=idempotency_keys.c.key.type)
_EXPIRED = idempotency_keys.c.expires_at <= sa.bindparam(
    "key_created_at", type_=idempotency_keys.c.expires_at.type
)
_LIVE_KEY = sa.select(idempotency_keys.c.key).where(_KEY_OWNER, _THIS_KEY, sa.not_(_EXPIRED))
_PREVIOUS = sa.select(
    idempotency_keys.c.request_hash, idempotency_keys.c.response_body, idempotency_keys.c.change_seq
).where(_KEY_OWNER, _THIS_KEY)


@functools.cache
def _claim(dialect: str, allowed: sa.ColumnElement[bool] | None = None) -> sa.Insert:
    """Claim the key: a new row, or the row of an expired claim of the same key, taken over.
    No row back: the key is held by a live claim (whose transaction, if still open, was
    waited for), or (`allowed` false) the create was refused."""
    columns = sa.select(*(value.label(name) for name, value in _KEY_COLUMNS.items()))
    if allowed is not None:
        columns = columns.where(allowed)
    statement = insert(dialect, idempotency_keys).from_select(list(_KEY_COLUMNS), columns)
    takeover = {
        name: getattr(statement.excluded, name)
        for name in ("request_hash", "response_body", "created_at", "expires_at", "change_seq")
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
def _create_in_one_statement(
    *, with_email: bool, keyed: bool, into_inbox: bool
) -> sa.Select[bool, bool, bool, int]:
    """PostgreSQL: provision the user, check the quota (locking the user's row), check the
    list, [drop expired keys, claim the key,] insert the task: one statement, atomic on its
    own, one round trip. Returns (allowed, claimed, inserted, the task's change_seq)."""
    provisioned, inbox = provisioning_ctes(with_email=with_email)
    quota = _USER_WITHIN_QUOTA.cte("quota")
    ctes: list[sa.CTE] = [provisioned, inbox, quota]
    # A user created by this statement has no tasks yet; otherwise its locked row decides.
    allowed = sa.or_(sa.exists(sa.select(provisioned.c.id)), sa.exists(sa.select(quota.c.id)))
    if not into_inbox:  # the inbox is made above when missing; another list must exist
        allowed = sa.and_(allowed, sa.exists(_LIST_EXISTS))
    go = allowed
    claimed = None
    if keyed:
        ctes.append(_expire("postgresql").cte("expired"))
        claimed = _claim("postgresql", allowed).cte("claimed")
        ctes.append(claimed)
        go = sa.exists(sa.select(claimed.c.key))
    columns = [_NEW_TASK[column.name].label(column.name) for column in _STORED]
    new_task = (
        postgresql.insert(tasks)
        .from_select([column.name for column in _STORED], sa.select(*columns).where(go))
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(tasks.c.id, tasks.c.change_seq)
        .cte("new_task")
    )
    ctes.append(new_task)
    return sa.select(
        allowed.label("allowed"),
        (sa.exists(sa.select(claimed.c.key)) if claimed is not None else sa.true()).label(
            "claimed"
        ),
        sa.exists(sa.select(new_task.c.id)).label("inserted"),
        sa.select(new_task.c.change_seq).scalar_subquery().label("change_seq"),
    ).add_cte(*ctes)


_LABELS_NAMED = (
    sa.select(labels.c.id, labels.c.name, labels.c.color)
    .where(
        labels.c.user_id == sa.bindparam("owner_id", type_=labels.c.user_id.type),
        in_id_list(labels.c.id, sa.bindparam("label_ids", type_=sa.Text)),
    )
    .order_by(labels.c.name_key, labels.c.id)
)


async def _labels_checked(
    session: Session | Database, dialect: str, user_id: str, label_ids: Sequence[uuid.UUID]
) -> list[LabelRef]:
    """The user's labels with these ids, by name; LabelsNotFound naming any that are not."""
    if not label_ids:
        return []
    statement = (
        sa.select(labels.c.id, labels.c.name, labels.c.color)
        .where(
            labels.c.user_id == sa.bindparam("owner_id", type_=labels.c.user_id.type),
            in_id_list(labels.c.id, sa.bindparam("label_ids", type_=sa.Text)),
        )
        .order_by(labels.c.name_key, labels.c.id)
    )
    parameters = {"owner_id": user_id, "label_ids": id_list_parameter(label_ids, dialect)}
    if isinstance(session, Database):
        rows = await session.rows(statement, parameters, idempotent=True)
    else:
        rows = await session.rows(statement, parameters)
    found = [LabelRef(*row) for row in rows]
    missing = [label for label in label_ids if label not in {ref.id for ref in found}]
    if missing:
        raise LabelsNotFound(missing)
    return found


def request_fingerprint(data: TaskCreate) -> str:
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


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


async def create_task(
    db: Database,
    *,
    user_id: str,
    data: TaskCreate,
    quotas: Quotas,
    email: str | None = None,
    key: str | None = None,
    ttl: timedelta = timedelta(hours=24),
) -> tuple[TaskRead, bool]:
    """Create a task, under an Idempotency-Key when `key` is given; (task, replayed).

    The key is claimed with INSERT … ON CONFLICT together with the task: a concurrent request
    with the same key waits on the claim (PostgreSQL) or the write lock (SQLite), then finds
    the stored response. A claim past its expiry is taken over. Idempotent by construction:
    run again after a commit whose answer was lost, it finds its own claim (or its own row).
    Raises QuotaExceeded, ListNotFound, LabelsNotFound, IdempotencyKeyReused.
    """
    if len(data.label_ids) > quotas.labels_per_task:
        raise QuotaExceeded("labels per task", quotas.labels_per_task)
    # The body's hash is what a replay is compared with: only keyed creates need it.
    fingerprint = request_fingerprint(data) if key is not None else ""
    # Labels are read first only when there are any: their names go into the answer.
    found = await _labels_checked(db, db.dialect, user_id, data.label_ids) if data.label_ids else []
    new = _new_task(user_id, data, email, found)
    parameters = new.parameters | {"task_quota": quotas.tasks}
    if key is not None:
        parameters |= _key_parameters(new.task, key, fingerprint, ttl)
    try:
        if db.dialect == "postgresql" and not data.label_ids:
            statement = _create_in_one_statement(
                with_email=email is not None, keyed=key is not None, into_inbox=new.into_inbox
            )
            for _ in range(2):
                [(allowed, claimed, inserted, change_seq)] = await db.rows(
                    statement, parameters, idempotent=True
                )
                if allowed or not await _below_quota(db, user_id, quotas.tasks):
                    break  # else: lost a race with this user's creation; its row is there now
            outcome = "created" if inserted else await _why_not(db, new, allowed, claimed, quotas)
        else:
            outcome, change_seq = await db.transaction(
                lambda session: _create_in_transaction(
                    session, db.dialect, new, parameters, quotas, key, data.label_ids
                ),
                idempotent=True,
            )
    except QuotaExceeded:
        # The retry of a keyed create that happened gets its first answer, even at the quota.
        if key is None or not await db.rows(_LIVE_KEY, parameters, idempotent=True):
            raise
        outcome = "replayed"
    if outcome == "created":
        if change_seq is None:  # a retry found the row its first attempt wrote
            change_seq = await _change_seq(db, user_id, new.task.id)
        return replace(new.task, change_seq=change_seq), False
    stored = await db.rows(_PREVIOUS, parameters, idempotent=True)
    request_hash, response_body, change_seq = stored[0]
    if request_hash != fingerprint:
        raise IdempotencyKeyReused()
    # The stored answer was made before the database chose the value; the key's row has it.
    return replace(TASK_JSON.validate_json(response_body), change_seq=int(change_seq)), True


_CHANGE_SEQ = sa.select(tasks.c.change_seq).where(*_OWNED)


async def _change_seq(db: Database, user_id: str, task_id: uuid.UUID) -> int:
    rows = await db.rows(_CHANGE_SEQ, {"owner_id": user_id, "task_id": task_id}, idempotent=True)
    return int(rows[0][0]) if rows else 0


async def _below_quota(db: Database, user_id: str, quota: int) -> bool:
    rows = await db.rows(_TASK_COUNT, {"owner_id": user_id}, idempotent=True)
    return bool(rows) and int(rows[0][0]) < quota


async def _why_not(db: Database, new: NewTask, allowed: bool, claimed: bool, quotas: Quotas) -> str:
    if not allowed:
        if not new.into_inbox and not await db.rows(_LIST_EXISTS, new.parameters, idempotent=True):
            raise ListNotFound(new.task.list_id)
        raise QuotaExceeded("tasks", quotas.tasks)
    if not claimed:
        return "replayed"
    return "created"  # a retry found the row its first attempt wrote


async def _create_in_transaction(
    session: Session,
    dialect: str,
    new: NewTask,
    parameters: dict[str, Any],
    quotas: Quotas,
    key: str | None,
    label_ids: Sequence[uuid.UUID],
) -> tuple[str, int | None]:
    """(outcome, the new task's change_seq: None when not inserted now)."""
    user_id = new.task.user_id
    created = await provision(session, dialect, parameters)
    if not created and not await session.rows(_USER_WITHIN_QUOTA, parameters):
        raise QuotaExceeded("tasks", quotas.tasks)
    if not new.into_inbox and not await session.rows(_LIST_EXISTS, parameters):
        raise ListNotFound(new.task.list_id)
    if key is not None:
        await session.rows(_expire(dialect), parameters)
        if not await session.rows(_claim(dialect), parameters):
            return "replayed", None
    inserted = await session.rows(_insert_task(dialect), parameters)
    if label_ids:
        # The labels were checked before; one deleted since fails the foreign key (409).
        await session.rows(
            _add_labels(dialect),
            {
                "owner_id": user_id,
                "task_ids": id_list_parameter([new.task.id], dialect),
                "label_ids": id_list_parameter(label_ids, dialect),
            },
        )
    return "created", int(inserted[0][0]) if inserted else None


# --- read ----------------------------------------------------------------------------------------


async def get_task(db: Database, *, user_id: str, task_id: uuid.UUID) -> TaskRead | None:
    rows = await db.rows(_GET, {"task_id": task_id, "owner_id": user_id}, idempotent=True)
    return _one_task(rows)


# --- change -------------------------------------------------------------------------------------


async def _changed(
    db: Database,
    statement: sa.Update | sa.Delete,
    parameters: dict[str, Any],
    *,
    if_match: Sequence[int] | None,
    session: Session | None = None,
) -> Sequence[Sequence[Any]]:
    """Run an UPDATE/DELETE of one owned task, guarded by If-Match versions when given.

    No row back means the task is missing or its version differs; only then is it read, to
    tell the two apart (404 or 412).
    """
    if if_match is not None:
        parameters["versions"] = versions_parameter(if_match, db.dialect)
    if session is None:
        rows = await db.rows(statement, parameters, idempotent=False)
    else:
        rows = await session.rows(statement, parameters)
    if not rows and if_match is not None:
        if session is None:
            current = await get_task(
                db, user_id=parameters["owner_id"], task_id=parameters["task_id"]
            )
        else:
            current = _one_task(await session.rows(_GET, parameters))
        if current is not None:
            raise StaleVersion(current)
    return rows


def _update_parameters(
    user_id: str, task_id: uuid.UUID, values: Mapping[str, Any]
) -> dict[str, Any]:
    now = utcnow()
    parameters: dict[str, Any] = {"task_id": task_id, "owner_id": user_id, "now": now}
    columns: dict[str, Any] = {}
    if "title" in values:
        columns["title"] = values["title"]
    if "description" in values:
        columns["description"] = values["description"]
    if "completed" in values:
        columns["completed"] = values["completed"]
    if "priority" in values:
        columns["priority"] = PRIORITY_NUMBER[values["priority"]]
    if "due" in values:
        due = values["due"]
        if isinstance(due, Mapping):  # PATCH: changes() dumps the DueInput to a dict
            due = DueInput.model_validate(due)
        columns |= {
            name: getattr(due_columns(due) if due is not None else NO_DUE, name)
            for name in DUE_COLUMNS
        }
    if "list_id" in values:
        columns["list_id"] = resolve_list(values["list_id"], user_id)
        columns["position"] = tail(now)  # the end of the destination list
    return parameters | flag_parameters(_FIELD_COLUMNS, values, columns)


async def _update_one(
    db: Database,
    *,
    user_id: str,
    task_id: uuid.UUID,
    values: Mapping[str, Any],
    toggle: bool = False,
    if_match: Sequence[int] | None,
    quotas: Quotas | None = None,
) -> TaskRead | None:
    """Raises ListNotFound (a `list_id` that is not the user's), LabelsNotFound."""
    statement = _update(db.dialect, toggle=toggle, guarded=if_match is not None)
    parameters = _update_parameters(user_id, task_id, values)
    label_ids = values.get("label_ids")
    if label_ids is not None and quotas is not None and len(label_ids) > quotas.labels_per_task:
        raise QuotaExceeded("labels per task", quotas.labels_per_task)
    try:
        if label_ids is None:
            return _one_task(await _changed(db, statement, parameters, if_match=if_match))

        async def work(session: Session) -> TaskRead | None:
            if if_match is not None:  # checked first, so a 412 shows the task as it is
                current = _one_task(await session.rows(_GET_LOCKED, parameters))
                if current is not None and current.version not in if_match:
                    raise StaleVersion(current)
            # Labels before the UPDATE, so that its RETURNING reads them as they now are.
            await _labels_checked(session, db.dialect, user_id, label_ids)
            ids = {
                "owner_id": user_id,
                "task_ids": id_list_parameter([task_id], db.dialect),
                "label_ids": id_list_parameter(label_ids, db.dialect),
            }
            await session.rows(_KEEP_ONLY_LABELS, ids)
            if label_ids:
                await session.rows(_add_labels(db.dialect), ids)
            rows = await _changed(db, statement, parameters, if_match=if_match, session=session)
            return _one_task(rows)

        return await db.transaction(work, idempotent=False)
    except DatabaseError as error:
        # The only constraint a checked change can break: the list is not the user's.
        if error.failure is Failure.INTEGRITY and "list_id" in values:
            raise ListNotFound(values["list_id"]) from None
        raise


async def replace_task(
    db: Database,
    *,
    user_id: str,
    task_id: uuid.UUID,
    data: TaskCreate,
    if_match: Sequence[int] | None = None,
    quotas: Quotas | None = None,
) -> TaskRead | None:
    values = {name: getattr(data, name) for name in TaskCreate.model_fields}
    return await _update_one(
        db, user_id=user_id, task_id=task_id, values=values, if_match=if_match, quotas=quotas
    )


async def update_task(
    db: Database,
    *,
    user_id: str,
    task_id: uuid.UUID,
    changes: Mapping[str, Any],
    if_match: Sequence[int] | None = None,
    quotas: Quotas | None = None,
) -> TaskRead | None:
    if not changes:  # nothing to change: not a modification; version and updated_at stay
        task = await get_task(db, user_id=user_id, task_id=task_id)
        if task is not None and not allows(if_match, task.version):
            raise StaleVersion(task)
        return task
    return await _update_one(
        db, user_id=user_id, task_id=task_id, values=changes, if_match=if_match, quotas=quotas
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


# --- move ---------------------------------------------------------------------------------------

# Not locked: a move locks the destination list first (moves into it take turns), and a
# rebalance then updates its siblings; a task row locked earlier could deadlock with that.
# A task deleted meanwhile makes the UPDATE find nothing: 404.
_CURRENT = sa.select(tasks.c.list_id, tasks.c.version).where(*_OWNED)
_PLACE = (
    sa.update(tasks)
    .where(*_OWNED)
    .values(
        list_id=sa.bindparam("new_list_id", type_=tasks.c.list_id.type),
        position=sa.bindparam("position", type_=tasks.c.position.type),
        updated_at=sa.bindparam("now", type_=tasks.c.updated_at.type),
        version=tasks.c.version + 1,
        **stamped(tasks),
    )
    .returning(*_TASK_COLUMNS)
)


async def move_task(
    db: Database,
    *,
    user_id: str,
    task_id: uuid.UUID,
    list_ref: uuid.UUID | str | None,
    after_id: uuid.UUID | None,
    before_id: uuid.UUID | None,
    if_match: Sequence[int] | None = None,
) -> TaskRead:
    """Put the task after/before another task of the destination list (default: its own), or
    first. The destination list's row is locked, so concurrent moves into it take turns and
    never compute the same key. Raises TaskNotFound, StaleVersion, ListNotFound,
    AnchorNotFound."""
    now = utcnow()

    async def work(session: Session) -> TaskRead:
        owned = {"owner_id": user_id, "task_id": task_id}
        current = await session.rows(_CURRENT, owned)
        if not current:
            raise TaskNotFound(task_id)
        list_id, version = current[0]
        if not allows(if_match, version):
            task = _one_task(await session.rows(_GET, owned))
            assert task is not None
            raise StaleVersion(task)
        destination = resolve_list(list_ref, user_id) if list_ref is not None else list_id
        if not await session.rows(_LOCK_LIST, owned | {"new_list_id": destination}):
            raise ListNotFound(list_ref if list_ref is not None else destination)
        position = await place(
            session, TASK_ORDER, list_scope(user_id, destination), moving_id=task_id,
            after_id=after_id, before_id=before_id, now=now,
        )  # fmt: skip
        parameters = owned | {"new_list_id": destination, "position": position, "now": now}
        task = _one_task(await session.rows(_PLACE, parameters))
        if task is None:  # deleted since it was read
            raise TaskNotFound(task_id)
        return task

    return await db.transaction(work, idempotent=False)


# --- bulk ---------------------------------------------------------------------------------------

_EXISTING = sa.select(tasks.c.id).where(
    _OWNER, in_id_list(tasks.c.id, sa.bindparam("task_ids", type_=sa.Text))
)


@functools.cache
def _bulk_update() -> sa.Update:
    """Set the chosen fields of the named tasks (one statement for all of them)."""
    bulk = {field: _FIELD_COLUMNS[field] for field in ("completed", "priority", "due")}
    values = _with_completion(flagged_values(tasks, bulk))
    return (
        sa.update(tasks)
        .values(values)
        .where(_OWNER, in_id_list(tasks.c.id, sa.bindparam("task_ids", type_=sa.Text)))
    )


async def bulk_change(
    db: Database, *, user_id: str, change: BulkChange, quotas: Quotas
) -> list[TaskRead]:
    """All or nothing, in one transaction: every id must be one of the user's tasks (else
    TasksNotFound naming those that are not), the list and labels the user's; the changed tasks
    come back in the order of `ids`."""
    now = utcnow()
    dialect = db.dialect
    ids = id_list_parameter(change.ids, dialect)
    fields = change.set.model_fields_set
    values = {name: getattr(change.set, name) for name in fields}
    parameters = _update_parameters(user_id, NOBODY, values) | {
        "owner_id": user_id, "task_ids": ids, "now": now,
    }  # fmt: skip

    async def work(session: Session) -> list[TaskRead]:
        found = {row[0] for row in await session.rows(_EXISTING, parameters)}
        missing = [task_id for task_id in change.ids if task_id not in found]
        if missing:
            raise TasksNotFound(missing)
        await _labels_checked(
            session, dialect, user_id, [*change.add_label_ids, *change.remove_label_ids]
        )
        await session.rows(_bulk_update(), parameters)
        if "list_id" in values and values["list_id"] is not None:
            destination = resolve_list(values["list_id"], user_id)
            if not await session.rows(_LOCK_LIST, parameters | {"new_list_id": destination}):
                raise ListNotFound(values["list_id"])
            # To the end of the destination, in the order given: one key each after a tail.
            prefix = tail(now)
            for index, task_id in enumerate(change.ids):
                await session.rows(_MOVE_TO_END, {
                    "owner_id": user_id, "task_id": task_id, "new_list_id": destination,
                    "position": f"{prefix}{index + 1:03d}V",
                })  # fmt: skip
        labelled = {"owner_id": user_id, "task_ids": ids}
        if change.remove_label_ids:
            await session.rows(
                _REMOVE_LABELS,
                labelled | {"label_ids": id_list_parameter(change.remove_label_ids, dialect)},
            )
        if change.add_label_ids:
            await session.rows(
                _add_labels(dialect),
                labelled | {"label_ids": id_list_parameter(change.add_label_ids, dialect)},
            )
            [(most,)] = await session.rows(_MOST_LABELS, labelled)
            if most is not None and most > quotas.labels_per_task:
                raise QuotaExceeded("labels per task", quotas.labels_per_task)
        rows = await session.rows(_SOME, labelled)
        by_id = {task.id: task for task in map(_to_task, rows)}
        return [by_id[task_id] for task_id in change.ids]

    return await db.transaction(work, idempotent=False)


_MOVE_TO_END = (
    sa.update(tasks)
    .where(*_OWNED, tasks.c.list_id != sa.bindparam("new_list_id", type_=tasks.c.list_id.type))
    .values(
        list_id=sa.bindparam("new_list_id", type_=tasks.c.list_id.type),
        position=sa.bindparam("position", type_=tasks.c.position.type),
        **stamped(tasks),
    )
)


# --- the sync feed ----------------------------------------------------------------------------

_CHANGED = feed_page(tasks, *_TASK_COLUMNS)


async def changed_tasks(session: Session, position: Mapping[str, Any]) -> list[TaskRead]:
    """A page of the user's tasks after a feed position (`tables.changes.feed_page`)."""
    return [_to_task(row) for row in await session.rows(_CHANGED, position)]
