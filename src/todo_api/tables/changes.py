"""The change sequence: what the sync feed (`todo_api.sync`) is ordered by.

Each user has a counter, `users.change_seq`. Every write of a task, list or label takes the
next value inside its transaction and stamps it on each row it writes (`change_seq`); a delete
leaves a `tombstones` row with the value instead. The counter's row lock orders one user's
writes in commit order, and a write that is refused or rolled back takes no value, so the
values a reader sees always form a prefix 1..n with no gaps.

Who assigns the value (migration 0005 creates the triggers):
- PostgreSQL: BEFORE INSERT/UPDATE row triggers, through `change_seq_of(user_id)`, which bumps
  the counter once per transaction (the value is remembered in a transaction-local setting,
  so it works through a transaction-mode pooler) and, when a process streams the user's
  events (`event_watches`), sends `NOTIFY todo_api_changes` with "<seq> <user_id>". A trigger
  runs only for a row that is really written (after its row lock and any concurrent-update
  recheck), so a refused write takes nothing. Statements write `next_change_seq(...)` into
  the column, which compiles to NULL there: a row reaching the table without the trigger
  fails NOT NULL instead of going unseen.
- SQLite (one writer at a time): the statement itself computes the value (the one this
  transaction took already, from `change_pending`, else the counter + 1) and AFTER triggers
  move the counter up to it and remember it; a row updated without a new value is refused.
Tombstones come from AFTER DELETE triggers on both, so cascades (a list's tasks) leave them too.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Field, SQLModel

from todo_api.platform.database.types import UTCDateTime
from todo_api.tables.users import USER_ID_MAX

# NOTIFY channel of committed changes: payload "<change_seq> <user_id>".
CHANNEL = "todo_api_changes"


def change_seq_column() -> sa.Column[int]:
    return sa.Column("change_seq", sa.BigInteger, nullable=False, server_default="0")


class next_change_seq(FunctionElement[int]):
    """The change sequence value of the current write of `owner` (a user id expression)."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(next_change_seq, "postgresql")
def _next_postgresql(element: next_change_seq, compiler: Any, **kw: Any) -> str:
    return "NULL"  # assigned by the row's BEFORE trigger (change_seq_of), see above


@compiles(next_change_seq)
def _next_sqlite(element: next_change_seq, compiler: Any, **kw: Any) -> str:
    # The value this transaction took already (change_pending), else the next one.
    (owner_clause,) = element.clauses
    owner = compiler.process(owner_clause, **kw)
    return (
        "(SELECT coalesce((SELECT change_pending.seq FROM change_pending WHERE "
        f"change_pending.user_id = {owner}), users.change_seq + 1) FROM users "
        f"WHERE users.id = {owner})"
    )


# SQLite: run first in every write transaction (see change_pending), and last: what the
# transaction changed, per user (its events, once it has committed).
TRANSACTION_SETUP = ("DELETE FROM change_pending",)
TRANSACTION_REPORT = "SELECT user_id, seq FROM change_pending"


def stamped(table: sa.Table) -> dict[str, sa.ColumnElement[Any]]:
    """The SET item of an UPDATE of `table`'s rows: each row its owner's next value."""
    return {"change_seq": next_change_seq(table.c.user_id)}


class Tombstone(SQLModel, table=True):
    """A deleted task, list or label: its ids and when, for `SYNC_RETENTION_SECONDS`."""

    __tablename__ = "tombstones"
    __table_args__ = (
        sa.PrimaryKeyConstraint("user_id", "kind", "id"),
        sa.CheckConstraint("kind IN ('label', 'list', 'task')", name="kind"),
        sa.Index("ix_tombstones_user_id_change_seq", "user_id", "change_seq"),
        sa.Index("ix_tombstones_deleted_at", "deleted_at"),
    )

    user_id: str = Field(
        sa_column=sa.Column(
            sa.String(USER_ID_MAX), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        )
    )
    kind: str = Field(sa_column=sa.Column(sa.String(8), nullable=False))
    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, nullable=False))
    change_seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    deleted_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))


class EventTicket(SQLModel, table=True):
    """A single-use, short-lived ticket for one events stream (an EventSource cannot send
    an Authorization header). Only its SHA-256 is stored."""

    __tablename__ = "event_tickets"
    __table_args__ = (sa.Index("ix_event_tickets_expires_at", "expires_at"),)

    digest: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    user_id: str = Field(
        sa_column=sa.Column(
            sa.String(USER_ID_MAX), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        )
    )
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))


class EventWatch(SQLModel, table=True):
    """PostgreSQL: a process with an open events stream of the user, until `expires_at`
    (refreshed while the stream lasts). A write sends its NOTIFY only when its user has a
    live row here: NOTIFY makes commits take a database-wide lock in turn, a cost worth
    paying only when someone listens. Empty on SQLite (no NOTIFY there)."""

    __tablename__ = "event_watches"
    __table_args__ = (
        sa.PrimaryKeyConstraint("user_id", "process_id"),
        sa.Index("ix_event_watches_expires_at", "expires_at"),
    )

    user_id: str = Field(
        sa_column=sa.Column(
            sa.String(USER_ID_MAX), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        )
    )
    process_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))


class ChangePending(SQLModel, table=True):
    """SQLite only (empty on PostgreSQL, whose transactions remember the value themselves):
    the value the current write transaction took, per user. SQLite runs one write
    transaction at a time, and the app empties this table as each one begins."""

    __tablename__ = "change_pending"

    user_id: str = Field(sa_column=sa.Column(sa.String(USER_ID_MAX), primary_key=True))
    seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


# The Core tables, for statements (SQLModel does not type `__table__`).
tombstones: sa.Table = Tombstone.__table__  # type: ignore[attr-defined]
event_tickets: sa.Table = EventTicket.__table__  # type: ignore[attr-defined]
event_watches: sa.Table = EventWatch.__table__  # type: ignore[attr-defined]


def changed_after(table: sa.Table) -> sa.ColumnElement[bool]:
    """The owner's rows written after the feed position (`after_seq`, `after_id`), for a page
    of the sync feed in (change_seq, id) order (index `ix_<table>_user_id_change_seq_id`)."""
    return sa.and_(
        table.c.user_id == sa.bindparam("owner_id", type_=table.c.user_id.type),
        sa.tuple_(table.c.change_seq, table.c.id)
        > sa.tuple_(
            sa.bindparam("after_seq", type_=sa.BigInteger),
            sa.bindparam("after_id", type_=table.c.id.type),
        ),
    )


def feed_page(table: sa.Table, *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """`columns` of the rows `changed_after`, in feed order, at most `:limit`."""
    return (
        sa.select(*columns)
        .where(changed_after(table))
        .order_by(table.c.change_seq, table.c.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
