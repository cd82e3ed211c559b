"""`users`: one row per identity-provider user, created (with its inbox) on the user's first
request that writes or reads the user."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from todo_api.platform.database.types import UTCDateTime

USER_ID_MAX = 128
# Ids come from an identity provider: any printable characters, no whitespace or controls.
USER_ID_PATTERN = r"^[^\s\x00-\x1f\x7f]{1,128}$"


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (sa.CheckConstraint("length(id) BETWEEN 1 AND 128", name="id_length"),)

    id: str = Field(sa_column=sa.Column(sa.String(USER_ID_MAX), primary_key=True))
    email: str | None = Field(
        default=None, sa_column=sa.Column(sa.String(320), unique=True, nullable=True)
    )
    # An IANA zone name (checked against zoneinfo on the way in): "today" and "overdue" are
    # evaluated in it.
    timezone: str = Field(
        default="UTC", sa_column=sa.Column(sa.Text, nullable=False, server_default="UTC")
    )
    # The user's live tasks, kept by triggers on `tasks` (migration 0004) and read under the
    # row's lock by a create, so that concurrent creates cannot pass the task quota.
    task_count: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0")
    )
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    # The user's change sequence: the value of its last committed write (tables.changes).
    change_seq: int = Field(
        default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0")
    )
    # The oldest sequence a sync token may start after: the newest purged tombstone's.
    sync_floor: int = Field(
        default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0")
    )


# The Core table, for statements (SQLModel does not type `__table__`).
users: sa.Table = User.__table__  # type: ignore[attr-defined]
