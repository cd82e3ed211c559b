"""The shapes of `/sync` and of the events ticket. A change's `kind` says what `data` is
(a discriminated union, so generated clients narrow it)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from todo_api.labels.schemas import LabelRead
from todo_api.lists.schemas import ListRead
from todo_api.tasks.schemas import TaskRead

SEQ = Field(description="The change sequence value of this change")
DELETED = Field(description="True: the resource was deleted, and `data` is null")


class TaskChange(BaseModel):
    kind: Literal["task"]
    id: uuid.UUID
    change_seq: int = SEQ
    deleted: bool = DELETED
    data: TaskRead | None


class ListChange(BaseModel):
    kind: Literal["list"]
    id: uuid.UUID
    change_seq: int = SEQ
    deleted: bool = DELETED
    data: ListRead | None


class LabelChange(BaseModel):
    kind: Literal["label"]
    id: uuid.UUID
    change_seq: int = SEQ
    deleted: bool = DELETED
    data: LabelRead | None


Change = Annotated[TaskChange | ListChange | LabelChange, Field(discriminator="kind")]


class SyncPage(BaseModel):
    changes: list[Change] = Field(
        description="Oldest first; each resource at most once, in its latest state"
    )
    next_token: str = Field(
        description="Pass as `token` for the next page, or (has_more false) for the changes "
        "made after this answer"
    )
    has_more: bool = Field(description="More changes wait: ask again with next_token now")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "changes": [
                        {
                            "kind": "task",
                            "id": "3f2b8c1e-9d4a-4b7e-8f1a-2c6d5e4b3a21",
                            "change_seq": 42,
                            "deleted": True,
                            "data": None,
                        }
                    ],
                    "next_token": "WzEsIjhkOTY5ZWVmNmVjYWQzYzIiLDQyXQ.c2lnbmF0dXJl",
                    "has_more": False,
                }
            ]
        }
    )


class EventsTicket(BaseModel):
    ticket: str = Field(description="Pass as `?ticket=` to GET …/events, once")
    expires_in: int = Field(description="Seconds it stays valid", examples=[60])
