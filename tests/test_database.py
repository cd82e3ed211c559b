"""The platform's database layer on its own: transactions, and what each kind of failure is
called, on SQLite and PostgreSQL (directly and through PgBouncer)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from support import count_rows
from todo_api.platform.database.database import Database
from todo_api.platform.database.engine import open_database
from todo_api.platform.database.errors import DatabaseError, Failure
from todo_api.platform.database.executors import Session
from todo_api.platform.database.types import utcnow
from todo_api.settings import Settings
from todo_api.tables.changes import TRANSACTION_SETUP
from todo_api.tables.users import users

pytestmark = pytest.mark.through_pooler

_NEW_USER = sa.insert(users).values(
    id=sa.bindparam("id", type_=users.c.id.type),
    created_at=sa.bindparam("now", type_=users.c.created_at.type),
)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = open_database(settings, transaction_setup=TRANSACTION_SETUP)
    yield database
    await database.dispose()


def _user(name: str) -> dict[str, Any]:
    return {"id": f"{name}-{uuid.uuid4().hex[:8]}", "now": utcnow()}


async def test_a_transaction_commits_all_of_its_statements(db: Database) -> None:
    first, second = _user("first"), _user("second")

    async def work(session: Session) -> int:
        await session.rows(_NEW_USER, first)
        await session.rows(_NEW_USER, second)
        return 2

    assert await db.transaction(work, idempotent=False) == 2
    assert await count_rows(db.engine, "users") == 2


async def test_a_failing_statement_rolls_back_the_whole_transaction(db: Database) -> None:
    user = _user("once")

    async def work(session: Session) -> None:
        await session.rows(_NEW_USER, user)
        await session.rows(_NEW_USER, user)  # the same id again: a unique violation

    with pytest.raises(DatabaseError) as raised:
        await db.transaction(work, idempotent=False)
    assert raised.value.failure is Failure.INTEGRITY
    assert raised.value.not_executed
    assert await count_rows(db.engine, "users") == 0


async def test_an_exception_in_the_work_rolls_back_and_propagates(db: Database) -> None:
    async def work(session: Session) -> None:
        await session.rows(_NEW_USER, _user("half"))
        raise LookupError("the caller changed its mind")

    with pytest.raises(LookupError):
        await db.transaction(work, idempotent=False)
    assert await count_rows(db.engine, "users") == 0
    # The connection went back in a usable state (or was replaced): the next statement runs.
    assert await db.rows(sa.text("SELECT 1"), idempotent=True) == [(1,)]


async def test_a_programming_error_is_a_bug_with_its_sqlstate(db: Database, backend: str) -> None:
    with pytest.raises(DatabaseError) as raised:
        await db.rows(sa.text("SELECT no_such_column FROM users"), idempotent=True)
    error = raised.value
    assert error.failure is Failure.BUG
    assert not error.connection_lost
    assert error.sqlstate == ("SQLITE_ERROR" if backend == "sqlite" else "42703")
    assert "no_such_column" in str(error)


async def test_a_constraint_violation_is_an_integrity_failure(db: Database) -> None:
    user = _user("twice")
    await db.rows(_NEW_USER, user, idempotent=False)
    with pytest.raises(DatabaseError) as raised:
        await db.rows(_NEW_USER, user, idempotent=False)
    assert raised.value.failure is Failure.INTEGRITY
    assert await count_rows(db.engine, "users") == 1
