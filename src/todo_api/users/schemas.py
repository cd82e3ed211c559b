"""The user resource's shapes, and the limits."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField

from todo_api.platform.http.schemas import InputModel, request_schema
from todo_api.platform.zones import ZoneName


class UserRead(BaseModel):
    id: str = PydanticField(json_schema_extra={"examples": ["user_2f9a"]})
    email: str | None = PydanticField(
        description="From the first token that provisioned the user; null when unknown"
    )
    timezone: str = PydanticField(
        description="IANA zone in which due filters and stats compute today and overdue",
        json_schema_extra={"examples": ["Europe/Berlin"]},
    )
    created_at: datetime


class UserUpdate(InputModel):
    timezone: ZoneName = PydanticField(description="An IANA zone name such as Europe/Berlin")

    model_config = ConfigDict(
        extra="forbid", json_schema_extra=request_schema({"timezone": "Europe/Berlin"})
    )


class Limit(BaseModel):
    limit: int = PydanticField(json_schema_extra={"examples": [500]})
    used: int | None = PydanticField(
        description="Current use; null for per-task limits", json_schema_extra={"examples": [3]}
    )


class Limits(BaseModel):
    """Each quota (QUOTA_* settings) with its current use; a write past one is answered 403
    `/problems/quota-exceeded`."""

    tasks: Limit
    lists: Limit
    labels: Limit
    labels_per_task: Limit
