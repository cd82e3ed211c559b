"""`idempotency_keys`: a POST made with an Idempotency-Key, the body it had and its answer."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from todo_api.platform.database.types import UTCDateTime
from todo_api.tables.changes import change_seq_column
from todo_api.tables.users import USER_ID_MAX


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_keys"
    __table_args__ = (sa.Index("ix_idempotency_keys_expires_at", "expires_at"),)

    user_id: str = Field(
        sa_column=sa.Column(
            sa.String(USER_ID_MAX),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        )
    )
    key: str = Field(sa_column=sa.Column(sa.String(255), primary_key=True))
    request_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    response_body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    # The create's change sequence value (the task's at creation), for its replays.
    change_seq: int = Field(default=0, sa_column=change_seq_column())


# The Core table, for statements (SQLModel does not type `__table__`).
idempotency_keys: sa.Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
