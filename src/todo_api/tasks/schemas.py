"""The task API's request and response shapes, derived from the fields declared once in
`todo_api.tables.tasks`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic import Field as PydanticField

from todo_api.platform.http.schemas import InputModel, PartialInput, partial_model, request_schema
from todo_api.tables.tasks import StrictBool, Task, TaskFields

# Set by the server: present in every response, refused in a request body.
READ_ONLY_FIELDS = frozenset(Task.model_fields) - frozenset(TaskFields.model_fields)


class TaskCreate(TaskFields, InputModel):
    """A new task, or the full replacement of one (PUT): omitted fields take their defaults
    (`description` null, `completed` false)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=request_schema(
            {"title": "Buy milk", "description": "2 litres", "completed": False}
        ),
    )


if TYPE_CHECKING:
    TaskUpdate = PartialInput
else:
    TaskUpdate = partial_model(
        TaskFields,
        name="TaskUpdate",
        doc="A partial update (PATCH): only the fields present change; `description: null` "
        "clears it.",
        examples=[{"completed": True}],
    )


class CompletionSet(InputModel):
    """Body of `…/complete`: set this value instead of toggling, so a retry is harmless."""

    completed: StrictBool

    model_config = ConfigDict(extra="forbid", json_schema_extra=request_schema({"completed": True}))


# A task as the API returns it: a plain slotted dataclass, not a pydantic model. The data layer
# builds one per row from typed columns (nothing to validate), and constructing a pydantic
# model costs about 3.5 µs (SQLModel several times more) where a slotted dataclass costs
# 0.4 µs; a page builds fifty. Pydantic still serialises it (TASK_JSON, or as a field of
# TaskPage) and documents it. Its fields are the table's columns: checked below, at import.
@dataclass(slots=True)
class TaskRead:
    id: uuid.UUID
    user_id: str
    title: str
    description: str | None
    completed: bool
    completed_at: Annotated[
        datetime | None,
        PydanticField(description="When the task was completed; null while it is open"),
    ]
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
                    # FastAPI drops null members from examples: a completed task shows all.
                    "completed": True,
                    "completed_at": "2026-11-26T09:30:00.000000Z",
                    "created_at": "2026-11-26T08:00:00.000000Z",
                    "updated_at": "2026-11-26T09:30:00.000000Z",
                    "version": 2,
                }
            ]
        },
    )


READ_FIELDS = tuple(field.name for field in fields(TaskRead))
if frozenset(READ_FIELDS) != frozenset(Task.model_fields):
    raise RuntimeError(
        f"TaskRead's fields {sorted(READ_FIELDS)} must be the tasks table's columns "
        f"{sorted(Task.model_fields)}"
    )

TASK_JSON: TypeAdapter[TaskRead] = TypeAdapter(TaskRead)


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class TaskPage(BaseModel):
    items: list[TaskRead]
    next_cursor: str | None = PydanticField(
        description="Pass as `cursor` to get the next page; null on the last page.",
        json_schema_extra={"examples": ["WzEsIi1jcmVhdGVkX2F0Ii…"]},
    )
    # Absent unless asked for (include_total=true), never null: optional, with no default.
    total: int = PydanticField(
        default=None,  # type: ignore[assignment]
        description="Tasks matching the filters; present with include_total=true",
        json_schema_extra=_without_default,
    )


class TaskStats(BaseModel):
    total: int = PydanticField(json_schema_extra={"examples": [12]})
    completed: int = PydanticField(json_schema_extra={"examples": [5]})
    pending: int = PydanticField(json_schema_extra={"examples": [7]})


class Deleted(BaseModel):
    deleted: int = PydanticField(
        description="How many tasks were deleted", json_schema_extra={"examples": [3]}
    )
