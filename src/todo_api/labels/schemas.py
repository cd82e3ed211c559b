"""The label API's request and response shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, JsonValue, Strict, StringConstraints
from pydantic import Field as PydanticField

from todo_api.platform.http.colors import Color
from todo_api.platform.http.schemas import InputModel, PartialInput, partial_model, request_schema
from todo_api.platform.http.text import SINGLE_LINE_PATTERN, single_line
from todo_api.tables.labels import LABEL_NAME_MAX

LabelName = Annotated[
    str,
    Strict(),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=LABEL_NAME_MAX),
    AfterValidator(single_line),
]


class LabelFields(InputModel):
    name: LabelName = PydanticField(
        description="Unique per user, ignoring case and Unicode compatibility forms "
        "(`Work`, `work` and a full-width `WORK` are one name)",
        json_schema_extra={"pattern": SINGLE_LINE_PATTERN},
    )
    color: Color | None = PydanticField(
        default=None,
        description="`#rrggbb`, or null for none",
        json_schema_extra={"examples": ["#ef4444"]},
    )


class LabelCreate(LabelFields):
    """A new label."""

    model_config = ConfigDict(  # type: ignore[assignment]  # SQLModel's config type
        extra="forbid", json_schema_extra=request_schema({"name": "Work", "color": "#ef4444"})
    )


if TYPE_CHECKING:
    LabelUpdate = PartialInput
else:
    LabelUpdate = partial_model(
        LabelFields,
        name="LabelUpdate",
        doc="A partial update: only the fields present change; `color: null` clears it.",
        examples=[{"name": "Errands"}, {"color": None}],
    )


_EXAMPLE: dict[str, JsonValue] = {
    "id": "9c1d2e3f-4a5b-4e5f-8a9b-0b6a1f8e3c4d",
    "name": "Work",
    "color": "#ef4444",
    "created_at": "2026-11-26T08:00:00.000000Z",
    "updated_at": "2026-11-26T09:30:00.000000Z",
    "version": 2,
    "change_seq": 41,
}


class LabelRead(BaseModel):
    id: uuid.UUID
    name: str
    color: str | None = PydanticField(description="`#rrggbb` (lower-case), or null")
    created_at: datetime
    updated_at: datetime
    version: int = PydanticField(
        description="Incremented by every change; the ETag is its quoted value"
    )
    change_seq: int = PydanticField(
        description="The change sequence value of its last change (see /sync)"
    )

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})


READ_ONLY_FIELDS = frozenset({"id", "created_at", "updated_at", "version", "change_seq"})


class LabelPage(BaseModel):
    """All of the user's labels (at most QUOTA_LABELS_PER_USER), by folded name."""

    items: list[LabelRead]

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_EXAMPLE]}]})
