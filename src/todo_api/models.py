"""Tables and the API's request/response shapes.

Tables (`table=True`) do not validate on construction (fastapi/sqlmodel#52), so input is only
accepted through the non-table models below; the database constraints back the same rules.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Strict,
    StringConstraints,
    TypeAdapter,
    field_validator,
)
from pydantic import Field as PydanticField
from sqlmodel import Field, SQLModel

TITLE_MAX = 255
DESCRIPTION_MAX = 10_000
USER_ID_MAX = 128
# Ids come from an identity provider: any printable characters, no whitespace or controls.
USER_ID_PATTERN = r"^[^\s\x00-\x1f\x7f]{1,128}$"

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC on every database.

    PostgreSQL stores `timestamptz`; SQLite has no time zones and hands back naive values,
    which are UTC because only UTC is ever written.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:  # asyncpg's timestamptz: already UTC
            return value
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- tables -----------------------------------------------------------------------------------


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (sa.CheckConstraint("length(id) BETWEEN 1 AND 128", name="id_length"),)

    id: str = Field(sa_column=sa.Column(sa.String(USER_ID_MAX), primary_key=True))
    email: str | None = Field(
        default=None, sa_column=sa.Column(sa.String(320), unique=True, nullable=True)
    )
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))


class Task(SQLModel, table=True):
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
    # Text, not VARCHAR(255): the length rule is the CHECK above, so a violation is always an
    # IntegrityError, never a driver-specific "value too long" error.
    title: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    completed: bool = Field(
        default=False,
        sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false()),
    )
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False))
    # Incremented by every change; the ETag. Compared inside the UPDATE for If-Match.
    version: int = Field(
        default=1, sa_column=sa.Column(sa.Integer, nullable=False, server_default="1")
    )


class IdempotencyKey(SQLModel, table=True):
    """A POST made with an Idempotency-Key: the body it had and the response it got."""

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


# --- request and response shapes --------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def storable_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded as UTF-8:
    # both would otherwise fail deep in the driver as a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _single_line(value: str) -> str:
    storable_text(value)
    if _CONTROL.search(value):
        raise ValueError("must be a single line without control characters")
    return value


Title = Annotated[
    str,
    Strict(),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX),
    AfterValidator(_single_line),
]
Description = Annotated[
    str, Strict(), StringConstraints(max_length=DESCRIPTION_MAX), AfterValidator(storable_text)
]
StrictBool = Annotated[bool, Strict()]

READ_ONLY_FIELDS = frozenset({"id", "user_id", "created_at", "updated_at"})


class _Input(SQLModel):
    # Unknown and read-only fields are errors, not silently ignored typos.
    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]


class TaskCreate(_Input):
    """A new task, or the full replacement of one (PUT): omitted fields take their defaults."""

    title: Title
    description: Description | None = None
    completed: StrictBool = False

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"title": "Buy milk", "description": "2 litres", "completed": False}]
        },
    )


class TaskUpdate(_Input):
    """A partial update (PATCH): only the fields present change; `description: null` clears it."""

    title: Title | None = None
    description: Description | None = None
    completed: StrictBool | None = None

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"completed": True}]})

    @field_validator("title", "completed", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # May be omitted, but not cleared: only `description` is nullable. (A field validator,
        # so that the error names the field.)
        if value is None:
            raise ValueError("cannot be null")
        return value

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class CompletionSet(_Input):
    """Body of `…/complete`: set this value instead of toggling, so a retry is harmless."""

    completed: StrictBool

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"completed": True}]})


# Response shapes are plain pydantic models, and a task is a plain dataclass: the data layer
# builds one per row from typed columns (nothing to validate), and constructing a pydantic model
# costs about 3.5 µs (SQLModel several times more) where a slotted dataclass costs 0.4 µs; a page
# builds fifty. Pydantic still serialises it (TASK_JSON, or as a field of TaskPage) and documents
# it in the OpenAPI schema.
@dataclass(slots=True)
class TaskRead:
    id: uuid.UUID
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime
    version: Annotated[
        int, PydanticField(description="Incremented by every change; the ETag is its quoted value")
    ]

    __pydantic_config__ = ConfigDict(
        title="TaskRead",
        json_schema_extra={
            "examples": [
                {
                    "id": "0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
                    "user_id": "user_2f9a",
                    "title": "Buy milk",
                    "description": "2 litres",
                    "completed": False,
                    "created_at": "2026-11-26T08:00:00.000000Z",
                    "updated_at": "2026-11-26T08:00:00.000000Z",
                    "version": 1,
                }
            ]
        },
    )


TASK_JSON: TypeAdapter[TaskRead] = TypeAdapter(TaskRead)


class TaskPage(BaseModel):
    items: list[TaskRead]
    next_cursor: str | None = PydanticField(
        description="Pass as `cursor` to get the next page; null on the last page.",
        json_schema_extra={"examples": ["WzEsIi1jcmVhdGVkX2F0Ii…"]},
    )
    total: int | None = PydanticField(
        default=None, description="Tasks matching the filters; present with include_total=true"
    )


class TaskStats(BaseModel):
    total: int = PydanticField(json_schema_extra={"examples": [12]})
    completed: int = PydanticField(json_schema_extra={"examples": [5]})
    pending: int = PydanticField(json_schema_extra={"examples": [7]})


class Deleted(BaseModel):
    deleted: int = PydanticField(
        description="How many tasks were deleted", json_schema_extra={"examples": [3]}
    )
