"""Every query on users. A user's row (and inbox) is provisioned by the first request that
needs it, inside that request's own statement or transaction."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from todo_api.platform.database.database import Database
from todo_api.platform.database.executors import Session
from todo_api.platform.database.types import utcnow
from todo_api.platform.positions import ranked
from todo_api.tables.changes import next_change_seq
from todo_api.tables.labels import labels
from todo_api.tables.lists import inbox_id, lists
from todo_api.tables.users import users

INBOX_NAME = "Inbox"
INBOX_POSITION = ranked(1)  # before every list created later (those get `tail` keys)

_NEW_USER = {
    "id": sa.bindparam("owner_id", type_=users.c.id.type),
    "created_at": sa.bindparam("now", type_=users.c.created_at.type),
}
_OWNER = users.c.id == sa.bindparam("owner_id", type_=users.c.id.type)


def insert(dialect: str, table: sa.Table) -> Any:
    """The dialect's INSERT, which has ON CONFLICT."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def owner_parameters(user_id: str, now: datetime, email: str | None) -> dict[str, Any]:
    """The parameters `ensure_user` and `ensure_inbox` read."""
    return {"owner_id": user_id, "now": now, "owner_email": email, "inbox_id": inbox_id(user_id)}


@functools.cache
def ensure_user(dialect: str, *, with_email: bool) -> sa.Insert:
    """Insert the user if absent, RETURNING its id when it was inserted. Parameters:
    `owner_parameters`.

    The email (from the token) is recorded on that first write only: the identity provider owns
    the address, and a later token never overwrites or fills it in (that would cost every
    write an UPDATE, racing with the UNIQUE constraint). An address already held by another
    user is not recorded: the user is created with a NULL email instead of failing the write.
    """
    if not with_email:
        statement: sa.Insert = (
            insert(dialect, users)
            .values(**_NEW_USER, email=None)
            .on_conflict_do_nothing(index_elements=[users.c.id])
        )
        return statement.returning(users.c.id)
    # One statement, two candidate rows tried in order, any unique conflict skipped: the row
    # with the email when both id and email are free, else the one without it when the email
    # is taken, else nothing (the user exists). ON CONFLICT makes this race-free where a
    # "does another user have this email?" SELECT first would not be.
    email: sa.BindParameter[Any] = sa.bindparam("owner_email", type_=users.c.email.type)
    rows = [{**_NEW_USER, "email": email}, {**_NEW_USER, "email": sa.null()}]
    statement = insert(dialect, users).values(rows).on_conflict_do_nothing()
    return statement.returning(users.c.id)


_INBOX = {
    "user_id": sa.bindparam("owner_id", type_=lists.c.user_id.type),
    "id": sa.bindparam("inbox_id", type_=lists.c.id.type),
    "name": sa.literal(INBOX_NAME, sa.Text),
    "color": sa.null(),
    "position": sa.literal(INBOX_POSITION, sa.Text),
    "is_inbox": sa.true(),
    "created_at": sa.bindparam("now", type_=lists.c.created_at.type),
    "updated_at": sa.bindparam("now", type_=lists.c.updated_at.type),
    "version": sa.literal(1),
    "change_seq": next_change_seq(sa.bindparam("owner_id", type_=lists.c.user_id.type)),
}


@functools.cache
def ensure_inbox(dialect: str) -> sa.Insert:
    """Insert the user's inbox if absent. Whether or not the user was created just now: a user
    row may predate its inbox (written by an older version, or by a concurrent request that
    provisioned the user only), and a task's foreign key needs the inbox."""
    # NOT EXISTS first: the inbox is nearly always there, and an index probe is cheaper than
    # the speculative insertion ON CONFLICT would start.
    inbox = sa.select(lists.c.id).where(
        lists.c.user_id == _INBOX["user_id"], lists.c.id == _INBOX["id"]
    )
    select = sa.select(*(value.label(name) for name, value in _INBOX.items())).where(
        ~sa.exists(inbox)
    )
    statement: sa.Insert = (
        insert(dialect, lists).from_select(list(_INBOX), select).on_conflict_do_nothing()
    )
    return statement


@functools.cache
def provisioning_ctes(*, with_email: bool) -> tuple[sa.CTE, sa.CTE]:
    """PostgreSQL: the user and its inbox as CTEs to attach to a statement (`add_cte`), which
    then provisions the user in the same round trip. Returns (user, inbox); the user CTE has
    a row only when the user was created by this statement."""
    user = ensure_user("postgresql", with_email=with_email).cte("provisioned")
    return user, ensure_inbox("postgresql").cte("provisioned_inbox")


async def provision(session: Session, dialect: str, parameters: dict[str, Any]) -> bool:
    """Provision the user in a transaction; whether it was created now."""
    with_email = parameters.get("owner_email") is not None
    created = bool(await session.rows(ensure_user(dialect, with_email=with_email), parameters))
    await session.rows(ensure_inbox(dialect), parameters)
    return created


# --- the user resource -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    email: str | None
    timezone: str
    created_at: datetime
    task_count: int


_USER_COLUMNS = (
    users.c.id,
    users.c.email,
    users.c.timezone,
    users.c.created_at,
    users.c.task_count,
)
_GET = sa.select(*_USER_COLUMNS).where(_OWNER)
_SET_TIMEZONE = (
    sa.update(users)
    .values(timezone=sa.bindparam("timezone", type_=users.c.timezone.type))
    .where(_OWNER)
    .returning(*_USER_COLUMNS)
)
_TIMEZONE = sa.select(users.c.timezone).where(_OWNER)


def _user(rows: Sequence[Sequence[Any]]) -> UserRow | None:
    return UserRow(*rows[0]) if rows else None


async def _provisioned(db: Database, user_id: str, email: str | None) -> None:
    parameters = owner_parameters(user_id, utcnow(), email)

    async def work(session: Session) -> None:
        await provision(session, db.dialect, parameters)

    await db.transaction(work, idempotent=True)


async def get_user(db: Database, *, user_id: str, email: str | None = None) -> UserRow:
    """The user, provisioned (with its inbox) if this is its first request."""
    parameters = {"owner_id": user_id}
    user = _user(await db.rows(_GET, parameters, idempotent=True))
    if user is None:
        await _provisioned(db, user_id, email)
        user = _user(await db.rows(_GET, parameters, idempotent=True))
    assert user is not None
    return user


async def set_timezone(
    db: Database, *, user_id: str, timezone: str, email: str | None = None
) -> UserRow:
    parameters = {"owner_id": user_id, "timezone": timezone}
    user = _user(await db.rows(_SET_TIMEZONE, parameters, idempotent=True))
    if user is None:
        await _provisioned(db, user_id, email)
        user = _user(await db.rows(_SET_TIMEZONE, parameters, idempotent=True))
    assert user is not None
    return user


async def user_timezone(db: Database, *, user_id: str) -> str:
    """The zone the user's "today" is in (UTC for a user with no row yet)."""
    rows = await db.rows(_TIMEZONE, {"owner_id": user_id}, idempotent=True)
    return str(rows[0][0]) if rows else "UTC"


# --- limits -------------------------------------------------------------------------------------

_USE = sa.select(
    sa.select(users.c.task_count).where(_OWNER).scalar_subquery(),
    sa.select(sa.func.count())
    .select_from(lists)
    .where(lists.c.user_id == _NEW_USER["id"])
    .scalar_subquery(),
    sa.select(sa.func.count())
    .select_from(labels)
    .where(labels.c.user_id == _NEW_USER["id"])
    .scalar_subquery(),
)


@dataclass(frozen=True)
class Use:
    tasks: int
    lists: int
    labels: int


async def use(db: Database, *, user_id: str) -> Use:
    [(task_count, list_count, label_count)] = await db.rows(
        _USE, {"owner_id": user_id}, idempotent=True
    )
    return Use(tasks=int(task_count or 0), lists=int(list_count), labels=int(label_count))
