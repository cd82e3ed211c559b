"""The task API's request and response shapes.

The writable fields are declared once, in `TaskInput`: the plain columns come from
`todo_api.tables.tasks.TaskFields` (title, description, completed); the rest are API values
the repository maps onto columns (`due` onto the due_* columns, `priority` onto a number,
`list_id` onto the list and a position, `label_ids` onto task_labels). `TaskCreate` and
`TaskUpdate` (generated: every field optional, null only where the field admits it) derive
from it, and so does the read-only list.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    TypeAdapter,
    model_validator,
)
from pydantic import Field as PydanticField

from todo_api.platform.http.schemas import (
    InputModel,
    PartialInput,
    one_anchor,
    partial_model,
    request_schema,
)
from todo_api.platform.zones import ZoneName, zone
from todo_api.tables.tasks import StrictBool, TaskFields

MAX_LABELS_PER_TASK = 50
INBOX: Literal["inbox"] = "inbox"
ListRef = uuid.UUID | Literal["inbox"]


class Priority(StrEnum):
    """Names, not numbers: no 1-is-high-or-4-is-high inversion (README maps the scales)."""

    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


def _priority_name(value: object) -> object:
    # A name (or a member), never a number. Not Strict(): strict enums take only members in
    # Python mode, which is how request bodies are validated, so every name was refused.
    if not isinstance(value, str):
        raise ValueError("must be one of 'none', 'low', 'medium', 'high'")
    return value


PriorityName = Annotated[Priority, BeforeValidator(_priority_name)]

PRIORITY_NUMBER = {priority: number for number, priority in enumerate(Priority)}
PRIORITY_OF_NUMBER = list(Priority)

_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _local_time(value: object) -> object:
    # Pydantic would also take offsets ("09:00+02:00") and fractions: a due time is a plain
    # wall-clock time; its zone, if any, is `timezone`.
    if not isinstance(value, time) and not (isinstance(value, str) and _TIME.match(value)):
        raise ValueError("must be a time HH:MM or HH:MM:SS (00:00 to 23:59:59)")
    return value


def _calendar_date(value: object) -> object:
    if not isinstance(value, date) and not (isinstance(value, str) and _DATE.match(value)):
        raise ValueError("must be a date YYYY-MM-DD")
    return value


# Strings only (lax pydantic would take 1764547200 as a date).
LocalTime = Annotated[time, BeforeValidator(_local_time)]
CalendarDate = Annotated[date, BeforeValidator(_calendar_date)]


class DueInput(InputModel):
    """All-day (`date`), floating (`date` + `time`: follows the user's zone) or fixed
    (`date` + `time` + `timezone`)."""

    date: CalendarDate
    time: LocalTime | None = None
    timezone: ZoneName | None = PydanticField(
        default=None, description="IANA zone of a fixed due; needs `time`"
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=request_schema(
            {"date": "2026-12-24"},
            {"date": "2026-12-24", "time": "18:30", "timezone": "Europe/Berlin"},
        ),
    )

    @model_validator(mode="after")
    def _zone_needs_time(self) -> DueInput:
        if self.timezone is not None and self.time is None:
            raise ValueError("timezone needs a time: an all-day due has no zone")
        if self.timezone is not None and self.time is not None:
            try:  # its instant (`at`) must exist: 9999-12-31 23:00 in Los Angeles does not
                datetime.combine(self.date, self.time, tzinfo=zone(self.timezone)).astimezone(UTC)
            except OverflowError:
                raise ValueError("the due's instant in UTC is outside years 1 to 9999") from None
        return self


def _distinct(ids: list[uuid.UUID]) -> list[uuid.UUID]:
    seen: set[uuid.UUID] = set()
    for item in ids:
        if item in seen:
            raise ValueError(f"lists {item} twice")
        seen.add(item)
    return ids


# Constraints in the type (not in Field()), so that the generated TaskUpdate keeps them.
LabelIds = Annotated[
    list[uuid.UUID], PydanticField(max_length=MAX_LABELS_PER_TASK), AfterValidator(_distinct)
]


class TaskInput(TaskFields):
    """Every field a client may set on a task. Defaults are what a new task gets."""

    due: DueInput | None = PydanticField(default=None, description="null: no due date")
    priority: PriorityName = PydanticField(default=Priority.NONE)
    list_id: ListRef = PydanticField(
        default=INBOX,
        description="The task's list (a list id or `inbox`); changing it moves the task",
    )
    label_ids: LabelIds = PydanticField(
        default_factory=list, description="Ids of the user's labels; no duplicates"
    )


class TaskCreate(TaskInput, InputModel):
    """A new task, or the full replacement of one (PUT): omitted fields take their defaults
    (no description, open, no due date, priority none, the inbox, no labels)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=request_schema(
            {"title": "Buy milk", "description": "2 litres", "completed": False},
            {
                "title": "Call Anna",
                "due": {"date": "2026-12-24", "time": "18:30"},
                "priority": "high",
            },
        ),
    )


if TYPE_CHECKING:
    TaskUpdate = PartialInput
else:
    TaskUpdate = partial_model(
        TaskInput,
        name="TaskUpdate",
        doc="A partial update (PATCH): only the fields present change; `null` clears "
        "`description` and `due`.",
        examples=[{"completed": True}, {"due": None}, {"list_id": "inbox"}],
    )
    TaskUpdate.model_rebuild()


class CompletionSet(InputModel):
    """Body of `…/complete`: set this value instead of toggling, so a retry is harmless."""

    completed: StrictBool

    model_config = ConfigDict(extra="forbid", json_schema_extra=request_schema({"completed": True}))


class TaskMove(InputModel):
    """Where to put the task: right after `after_id`, right before `before_id`, or (neither)
    first, in `list_id` (default: its current list)."""

    list_id: ListRef | None = None
    after_id: uuid.UUID | None = None
    before_id: uuid.UUID | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=one_anchor(
            request_schema({"after_id": "0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"})
        ),
    )


class BulkFields(InputModel):
    completed: StrictBool
    priority: PriorityName
    list_id: ListRef
    due: DueInput | None


if TYPE_CHECKING:
    BulkSet = PartialInput
else:
    # Omittable, never null, except `due` (null: no due date): in the schema too.
    BulkSet = partial_model(
        BulkFields,
        name="BulkSet",
        doc="The fields to set on every task named; absent ones stay as they are.",
        examples=[{"completed": True}, {"list_id": "inbox", "due": None}],
    )


MAX_BULK = 200


class BulkChange(InputModel):
    """Change up to 200 tasks at once, all or nothing. In `set`, `due: null` clears the due
    date; an absent member leaves the field alone."""

    ids: Annotated[
        list[uuid.UUID], PydanticField(min_length=1, max_length=MAX_BULK), AfterValidator(_distinct)
    ]
    set: BulkSet = PydanticField(default_factory=BulkSet)
    add_label_ids: LabelIds = PydanticField(default_factory=list)
    remove_label_ids: LabelIds = PydanticField(default_factory=list)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=request_schema(
            {"ids": ["0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"], "set": {"priority": "high"}}
        ),
    )

    @model_validator(mode="after")
    def _add_or_remove(self) -> BulkChange:
        if set(self.add_label_ids) & set(self.remove_label_ids):
            raise ValueError("a label cannot be both added and removed")
        return self


# --- responses ----------------------------------------------------------------------------------
# Plain slotted dataclasses, not pydantic models: the data layer builds one per row from typed
# columns (nothing to validate); constructing a pydantic model costs about 3.5 µs where a
# slotted dataclass costs 0.4 µs, and a page builds fifty. Pydantic still serialises and
# documents them.


# Field names that are also type names: the types by other names, for the annotations.
Date = date
Time = time


@dataclass(slots=True)
class DueRead:
    date: Date
    time: Time | None
    timezone: str | None
    at: Annotated[
        datetime | None,
        PydanticField(description="The instant of a fixed due, in UTC; null otherwise"),
    ]


@dataclass(slots=True)
class LabelRef:
    id: uuid.UUID
    name: str
    color: str | None


TASK_EXAMPLE: dict[str, Any] = {
    "id": "0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
    "user_id": "user_2f9a",
    "list_id": "5f0c3a52-95c4-4a55-8a8e-1d8c1b0f7a10",
    "title": "Buy milk",
    "description": "2 litres",
    "completed": True,
    "completed_at": "2026-11-26T09:30:00.000000Z",
    "priority": "high",
    "due": {
        "date": "2026-11-26",
        "time": "18:30:00",
        "timezone": "Europe/Berlin",
        "at": "2026-11-26T17:30:00Z",
    },
    "label_ids": ["9c1d2e3f-4a5b-4e5f-8a9b-0b6a1f8e3c4d"],
    "labels": [
        {
            "id": "9c1d2e3f-4a5b-4e5f-8a9b-0b6a1f8e3c4d",
            "name": "errands",
            "color": "#22c55e",
        }
    ],
    "position": "b8E2bAFCMVzJt",
    "created_at": "2026-11-26T08:00:00.000000Z",
    "updated_at": "2026-11-26T09:30:00.000000Z",
    "version": 2,
    "change_seq": 42,
}


@dataclass(slots=True)
class TaskRead:
    id: uuid.UUID
    user_id: str
    list_id: uuid.UUID
    title: str
    description: str | None
    completed: bool
    completed_at: Annotated[
        datetime | None,
        PydanticField(description="When the task was completed; null while it is open"),
    ]
    priority: Priority
    due: DueRead | None
    label_ids: list[uuid.UUID]
    labels: list[LabelRef]
    position: Annotated[
        str, PydanticField(description="Ordering key within the list; compare byte-wise")
    ]
    created_at: datetime
    updated_at: datetime
    version: Annotated[
        int, PydanticField(description="Incremented by every change; the ETag is its quoted value")
    ]
    change_seq: Annotated[
        int, PydanticField(description="The change sequence value of its last change (see /sync)")
    ]

    __pydantic_config__ = ConfigDict(
        title="TaskRead",
        json_schema_extra={"examples": [TASK_EXAMPLE]},
    )


# Set by the server: present in every response, refused in a request body.
READ_ONLY_FIELDS = frozenset(field.name for field in fields(TaskRead)) - frozenset(
    TaskInput.model_fields
) | {"due.at"}

TASK_JSON: TypeAdapter[TaskRead] = TypeAdapter(TaskRead)
TASKS_JSON: TypeAdapter[list[TaskRead]] = TypeAdapter(list[TaskRead])


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
    overdue: int = PydanticField(
        description="Open tasks past due, in the user's zone", json_schema_extra={"examples": [2]}
    )
    due_today: int = PydanticField(
        description="Open tasks due today, in the user's zone", json_schema_extra={"examples": [3]}
    )


class Deleted(BaseModel):
    deleted: int = PydanticField(
        description="How many tasks were deleted", json_schema_extra={"examples": [3]}
    )


class BulkResult(BaseModel):
    items: list[TaskRead] = PydanticField(description="The changed tasks, in the order of `ids`")

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [TASK_EXAMPLE]}]})


# --- due: from input to columns, and back --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DueColumns:
    due_date: date | None = None
    due_time: time | None = None
    due_timezone: str | None = None
    due_at: datetime | None = None
    due_sort: datetime | None = None


NO_DUE = DueColumns()
DUE_COLUMNS = tuple(field.name for field in fields(DueColumns))


def due_columns(due: DueInput | None) -> DueColumns:
    if due is None:
        return NO_DUE
    at = None
    if due.timezone is not None and due.time is not None:
        # fold=0: an ambiguous time is its first occurrence; a time that does not exist
        # (spring forward) lands after the gap, as PEP 495 converts it.
        local = datetime.combine(due.date, due.time, tzinfo=zone(due.timezone))
        at = local.astimezone(UTC)
    # The wall clock (all-day: the end of the day), as if it were UTC: see tables.tasks.
    wall = datetime.combine(due.date, due.time if due.time is not None else time.max, tzinfo=UTC)
    return DueColumns(due.date, due.time, due.timezone, at, wall)


def due_read(
    due_date: date | None, due_time: time | None, timezone: str | None, at: datetime | None
) -> DueRead | None:
    return None if due_date is None else DueRead(due_date, due_time, timezone, at)
