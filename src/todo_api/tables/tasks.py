"""`tasks`: the one declaration of every task field.

`TaskFields` holds the fields a client writes, with their validation rules and their columns;
`Task` (the table) adds the ones the server sets. Request and response shapes in
`todo_api.tasks.schemas` derive from these two classes, and so do the read-only, sortable and
filterable field lists: a new field is declared here and nowhere else.
"""

from __future__ import annotations

import uuid
from datetime import datetime
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


# The Core table, for statements (SQLModel does not type `__table__`).
tasks: sa.Table = Task.__table__  # type: ignore[attr-defined]
