"""`tasks`: the one declaration of every task field.

`TaskFields` holds the fields a client writes, with their validation rules and their columns;
`Task` (the table) adds the ones the server sets. Request and response shapes in
`todo_api.tasks.schemas` derive from these two classes, and so do the read-only, sortable and
filterable field lists: a new field is declared here and nowhere else.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time
from typing import Annotated

import sqlalchemy as sa
from pydantic import AfterValidator, Strict, StringConstraints
from sqlmodel import Field, SQLModel

from todo_api.platform.database.types import UTCDateTime
from todo_api.platform.http.text import (
    SINGLE_LINE_PATTERN,
    STORABLE_PATTERN,
    single_line,
    storable_text,
)
from todo_api.tables.changes import change_seq_column
from todo_api.tables.lists import POSITION
from todo_api.tables.users import USER_ID_MAX

TITLE_MAX = 255
DESCRIPTION_MAX = 10_000

Title = Annotated[
    str,
    Strict(),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX),
    AfterValidator(single_line),
]
Description = Annotated[
    str, Strict(), StringConstraints(max_length=DESCRIPTION_MAX), AfterValidator(storable_text)
]
StrictBool = Annotated[bool, Strict()]


class TaskFields(SQLModel):
    """What a client may set on a task. Defaults are the values a new task gets."""

    # Text, not VARCHAR(255): the length rule is the CHECK below, so a violation is always an
    # IntegrityError, never a driver-specific "value too long" error.
    title: Title = Field(
        sa_column=sa.Column(sa.Text, nullable=False),
        schema_extra={"json_schema_extra": {"pattern": SINGLE_LINE_PATTERN}},
    )
    description: Description | None = Field(
        default=None,
        sa_column=sa.Column(sa.Text, nullable=True),
        schema_extra={"json_schema_extra": {"pattern": STORABLE_PATTERN}},
    )
    completed: StrictBool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
    )


class Task(TaskFields, table=True):
    __tablename__ = "tasks"
    __table_args__ = (
        sa.CheckConstraint(
            "length(trim(title)) >= 1 AND length(title) <= 255", name="title_length"
        ),
        sa.CheckConstraint(
            "description IS NULL OR length(description) <= 10000", name="description_length"
        ),
        # One index per sort order, user_id leading: each serves "this user's tasks in this
        # order" and its keyset pagination in both directions (and `updated_since`).
        sa.Index("ix_tasks_user_id_created_at_id", "user_id", "created_at", "id"),
        sa.Index("ix_tasks_user_id_updated_at_id", "user_id", "updated_at", "id"),
        sa.Index("ix_tasks_user_id_title_id", "user_id", "title", "id"),
        sa.Index("ix_tasks_user_id_completed_at_id", "user_id", "completed_at", "id"),
        sa.Index("ix_tasks_user_id_priority_id", "user_id", "priority", "id"),
        # The sync feed, in change order (todo_api.sync).
        sa.Index("ix_tasks_user_id_change_seq_id", "user_id", "change_seq", "id"),
        # Serves `sort=due` and, through the local date the wall time starts with, every due
        # filter (a range on it prunes before the exact test).
        sa.Index("ix_tasks_user_id_due_sort_id", "user_id", "due_sort", "id"),
        # Keyed by owner (docs/decisions/0003): the target of task_labels' foreign key.
        sa.UniqueConstraint("user_id", "id"),
        # A task lives in one of its owner's lists; the database makes any other list
        # impossible, and deleting a list deletes its tasks.
        sa.ForeignKeyConstraint(
            ["user_id", "list_id"],
            ["lists.user_id", "lists.id"],
            ondelete="CASCADE",
            name="fk_tasks_list",
        ),
        # Manual order: unique within a list, so concurrent moves cannot tie; also the
        # index of `sort=position`.
        sa.UniqueConstraint("user_id", "list_id", "position"),
        sa.CheckConstraint("priority BETWEEN 0 AND 3", name="priority_range"),
        # A due date is all-day (date), floating (date + time) or fixed (date + time + zone,
        # with its instant `due_at`); `due_sort` is set exactly when there is a date.
        sa.CheckConstraint(
            "(due_time IS NULL OR due_date IS NOT NULL)"
            " AND (due_timezone IS NULL OR due_time IS NOT NULL)"
            " AND ((due_timezone IS NULL) = (due_at IS NULL))"
            " AND ((due_date IS NULL) = (due_sort IS NULL))",
            name="due_shape",
        ),
        # Search (`q`) on PostgreSQL also has trigram GIN indexes on title and description;
        # they exist only there, so they live in migration 0002, not in this metadata.
    )

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, primary_key=True))
    user_id: str = Field(
        sa_column=sa.Column(
            sa.String(USER_ID_MAX),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        )
    )
    list_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, nullable=False))
    # Fractional ordering key within the list (todo_api.platform.positions).
    position: str = Field(sa_column=sa.Column(POSITION, nullable=False))
    # 0 none, 1 low, 2 medium, 3 high: numbers only here, so that they sort; the API speaks
    # names (todo_api.tasks.schemas.Priority).
    priority: int = Field(
        default=0, sa_column=sa.Column(sa.SmallInteger, nullable=False, server_default="0")
    )
    due_date: date | None = Field(default=None, sa_column=sa.Column(sa.Date, nullable=True))
    due_time: time | None = Field(default=None, sa_column=sa.Column(sa.Time, nullable=True))
    due_timezone: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    # The instant of a fixed-zone due (date + time in due_timezone), in UTC.
    due_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime, nullable=True))
    # The due's wall-clock time (all-day: the end of its day), stored as if it were UTC: the
    # sort key of `sort=due`, and the prefilter of the date filters.
    due_sort: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime, nullable=True))
    # Set when the task becomes completed, cleared when it is reopened.
    completed_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime, nullable=True)
    )
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    # Incremented by every change; the ETag. Compared inside the UPDATE for If-Match.
    version: int = Field(
        default=1, sa_column=sa.Column(sa.Integer, nullable=False, server_default="1")
    )
    # The change sequence value of the row's last write (todo_api.tables.changes).
    change_seq: int = Field(default=0, sa_column=change_seq_column())


# The Core table, for statements (SQLModel does not type `__table__`).
tasks: sa.Table = Task.__table__  # type: ignore[attr-defined]
