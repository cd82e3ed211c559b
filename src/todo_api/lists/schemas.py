"""The list API's request and response shapes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, StringConstraints
from pydantic import Field as PydanticField

from todo_api.platform.http.colors import Color
from todo_api.platform.http.schemas import (
    InputModel,
    PartialInput,
    one_anchor,
    partial_model,
    request_schema,
)
from todo_api.platform.http.text import SINGLE_LINE_PATTERN, single_line
from todo_api.tables.lists import LIST_NAME_MAX

# A list named by id, or the user's inbox by its alias.
INBOX = "inbox"
ListRef = uuid.UUID | Literal["inbox"]

ListName = Annotated[
    str,
    Strict(),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=LIST_NAME_MAX),
    AfterValidator(single_line),
]


class ListFields(InputModel):
    name: ListName = PydanticField(json_schema_extra={"pattern": SINGLE_LINE_PATTERN})
    color: Color | None = PydanticField(
        default=None,
        description="`#rrggbb`, or null for none",
        json_schema_extra={"examples": ["#3b82f6"]},
    )


class ListCreate(ListFields):
    """A new list; it goes after the user's other lists."""

    model_config = ConfigDict(  # type: ignore[assignment]
        extra="forbid", json_schema_extra=request_schema({"name": "Groceries", "color": "#22c55e"})
    )


if TYPE_CHECKING:
    ListUpdate = PartialInput
else:
    ListUpdate = partial_model(
        ListFields,
        name="ListUpdate",
        doc="A partial update: only the fields present change; `color: null` clears it.",
        examples=[{"name": "Errands"}],
    )


class Move(InputModel):
    """Where to put it: right after `after_id`, right before `before_id`, or (neither) first."""

    after_id: ListRef | None = PydanticField(default=None)
    before_id: ListRef | None = PydanticField(default=None)

    model_config = ConfigDict(
        extra="forbid", json_schema_extra=one_anchor(request_schema({"after_id": "inbox"}))
    )


LIST_EXAMPLE: dict[str, Any] = {
    "id": "5f0c3a52-95c4-4a55-8a8e-1d8c1b0f7a10",
    "name": "Groceries",
    "color": "#22c55e",
    "position": "b8E2bAFCMVzJt",
    "is_inbox": False,
    "task_count": 4,
    "open_task_count": 3,
    "created_at": "2026-11-26T08:00:00.000000Z",
    "updated_at": "2026-11-26T09:30:00.000000Z",
    "version": 2,
    "change_seq": 40,
}


@dataclass(slots=True)
class ListRead:
    id: uuid.UUID
    name: str
    color: str | None
    position: Annotated[
        str, PydanticField(description="Ordering key among the user's lists (byte-wise)")
    ]
    is_inbox: bool
    task_count: int
    open_task_count: int
    created_at: datetime
    updated_at: datetime
    version: int
    change_seq: Annotated[
        int, PydanticField(description="The change sequence value of its last change (see /sync)")
    ]

    __pydantic_config__ = ConfigDict(
        title="ListRead",
        json_schema_extra={"examples": [LIST_EXAMPLE]},
    )


READ_ONLY_FIELDS = frozenset(
    {
        "id",
        "position",
        "is_inbox",
        "task_count",
        "open_task_count",
        "created_at",
        "updated_at",
        "version",
        "change_seq",
    }
)


class ListPage(BaseModel):
    """All of the user's lists (at most QUOTA_LISTS_PER_USER), in their manual order."""

    items: list[ListRead]

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [LIST_EXAMPLE]}]})
