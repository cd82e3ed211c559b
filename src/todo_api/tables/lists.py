"""`lists`: a user's task lists, one of them the inbox, in the user's manual order."""

from __future__ import annotations

import functools
import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from todo_api.platform.database.types import UTCDateTime
from todo_api.tables.changes import change_seq_column
from todo_api.tables.users import USER_ID_MAX

LIST_NAME_MAX = 120
# Ordering keys compare byte-wise (todo_api.platform.positions): "C" on PostgreSQL; SQLite's
# default BINARY collation already is.
POSITION = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
COLOR_CHECK = "{column} IS NULL OR (length({column}) = 7 AND substr({column}, 1, 1) = '#')"

# The inbox's id is derived from the user's id, so every statement knows it without a lookup
# and a user's first write can create it in the same statement.
INBOX_NAMESPACE = uuid.UUID("5f0c3a52-95c4-4a55-8a8e-1d8c1b0f7a10")


@functools.lru_cache(maxsize=4096)  # a SHA-1 per call, and a create asks up to three times
def inbox_id(user_id: str) -> uuid.UUID:
    return uuid.uuid5(INBOX_NAMESPACE, user_id)


class TaskList(SQLModel, table=True):
    __tablename__ = "lists"
    __table_args__ = (
        # Keyed by owner first: every foreign key to a list carries the user_id (a sharded
        # PostgreSQL can distribute by user_id unchanged; docs/decisions/0003).
        sa.PrimaryKeyConstraint("user_id", "id"),
        sa.CheckConstraint(
            f"length(trim(name)) >= 1 AND length(name) <= {LIST_NAME_MAX}", name="name_length"
        ),
        sa.CheckConstraint(COLOR_CHECK.format(column="color"), name="color_format"),
        sa.UniqueConstraint("user_id", "position"),
        sa.Index("ix_lists_user_id_change_seq_id", "user_id", "change_seq", "id"),
        sa.Index(
            "uq_lists_user_id_inbox",
            "user_id",
            unique=True,
            postgresql_where=sa.text("is_inbox"),
            sqlite_where=sa.text("is_inbox"),
        ),
    )

    user_id: str = Field(
        sa_column=sa.Column(
            sa.String(USER_ID_MAX), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        )
    )
    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, nullable=False))
    name: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    color: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    position: str = Field(sa_column=sa.Column(POSITION, nullable=False))
    is_inbox: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
    )
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    version: int = Field(
        default=1, sa_column=sa.Column(sa.Integer, nullable=False, server_default="1")
    )
    # The change sequence value of the row's last write (todo_api.tables.changes).
    change_seq: int = Field(default=0, sa_column=change_seq_column())


lists: sa.Table = TaskList.__table__  # type: ignore[attr-defined]
