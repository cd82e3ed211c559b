"""`labels`: a user's labels; `task_labels`: which task carries which label."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from todo_api.platform.database.types import UTCDateTime
from todo_api.tables.changes import change_seq_column
from todo_api.tables.lists import COLOR_CHECK
from todo_api.tables.users import USER_ID_MAX

LABEL_NAME_MAX = 60


class Label(SQLModel, table=True):
    __tablename__ = "labels"
    __table_args__ = (
        sa.PrimaryKeyConstraint("user_id", "id"),
        sa.Index("ix_labels_user_id_change_seq_id", "user_id", "change_seq", "id"),
        sa.CheckConstraint(
            f"length(trim(name)) >= 1 AND length(name) <= {LABEL_NAME_MAX}", name="name_length"
        ),
        sa.CheckConstraint(COLOR_CHECK.format(column="color"), name="color_format"),
        # `name_key` is the name folded (NFKC + casefold, computed in Python): `Work`, `work`
        # and the full-width `WORK` are one name, refused twice by this constraint, race-free.
        sa.UniqueConstraint("user_id", "name_key"),
    )

    user_id: str = Field(
        sa_column=sa.Column(
            sa.String(USER_ID_MAX), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        )
    )
    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, nullable=False))
    name: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    name_key: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    color: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    version: int = Field(
        default=1, sa_column=sa.Column(sa.Integer, nullable=False, server_default="1")
    )
    # The change sequence value of the row's last write (todo_api.tables.changes).
    change_seq: int = Field(default=0, sa_column=change_seq_column())


class TaskLabel(SQLModel, table=True):
    __tablename__ = "task_labels"
    __table_args__ = (
        sa.PrimaryKeyConstraint("user_id", "task_id", "label_id"),
        # Both foreign keys include the owner: a task can only carry its owner's labels, and
        # deleting a task or a label removes its rows in the same statement.
        sa.ForeignKeyConstraint(
            ["user_id", "task_id"],
            ["tasks.user_id", "tasks.id"],
            ondelete="CASCADE",
            name="fk_task_labels_task",
        ),
        sa.ForeignKeyConstraint(
            ["user_id", "label_id"],
            ["labels.user_id", "labels.id"],
            ondelete="CASCADE",
            name="fk_task_labels_label",
        ),
        # `labels_any` / `labels_all` and label deletion start from the label.
        sa.Index("ix_task_labels_user_id_label_id_task_id", "user_id", "label_id", "task_id"),
    )

    user_id: str = Field(sa_column=sa.Column(sa.String(USER_ID_MAX), nullable=False))
    task_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, nullable=False))
    label_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, nullable=False))


labels: sa.Table = Label.__table__  # type: ignore[attr-defined]
task_labels: sa.Table = TaskLabel.__table__  # type: ignore[attr-defined]
