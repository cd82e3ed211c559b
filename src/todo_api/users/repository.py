"""Statements on users. Users have no route of their own yet: a user's first write provisions
the row, inside that write's own statement or transaction."""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from todo_api.tables.users import users

_NEW_USER = {
    "id": sa.bindparam("owner_id", type_=users.c.id.type),
    "created_at": sa.bindparam("now", type_=users.c.created_at.type),
}


def insert(dialect: str, table: sa.Table) -> Any:
    """The dialect's INSERT, which has ON CONFLICT."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


@functools.cache
def ensure_user(dialect: str, *, with_email: bool) -> sa.Insert:
    """Insert the user if absent. Parameters: `owner_id`, `now`, `owner_email`.

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
        return statement
    # One statement, two candidate rows tried in order, any unique conflict skipped: the row
    # with the email when both id and email are free, else the one without it when the email
    # is taken, else nothing (the user exists). ON CONFLICT makes this race-free where a
    # "does another user have this email?" SELECT first would not be.
    email: sa.BindParameter[Any] = sa.bindparam("owner_email", type_=users.c.email.type)
    rows = [{**_NEW_USER, "email": email}, {**_NEW_USER, "email": sa.null()}]
    statement = insert(dialect, users).values(rows).on_conflict_do_nothing()
    return statement
