"""What can go wrong with a task request, each error with the answer it gets."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from todo_api.platform.http.conditional import etag
from todo_api.platform.http.problems import (
    FieldError,
    NotFound,
    PreconditionFailed,
    UnprocessableContent,
)

if TYPE_CHECKING:
    from todo_api.tasks.schemas import TaskRead


class TaskNotFound(NotFound):
    def __init__(self, task_id: uuid.UUID) -> None:
        # Identical whether the task never existed or belongs to someone else: no existence
        # leak.
        super().__init__(f"No task {task_id} for this user")


class StaleVersion(PreconditionFailed):
    """If-Match named versions the task no longer has; `current` is what it is now."""

    def __init__(self, current: TaskRead) -> None:
        tag = etag(current)
        super().__init__(
            f"If-Match does not match the task's current ETag {tag}; "
            "fetch it again and retry with that ETag",
            headers={"ETag": tag},
        )
        self.current = current


class IdempotencyKeyReused(UnprocessableContent):
    """The Idempotency-Key was first used with a different request body."""

    def __init__(self) -> None:
        message = "already used with a different request body; use a new key for a new task"
        super().__init__(
            f"This Idempotency-Key was {message}",
            errors=[
                FieldError(
                    location="header",
                    field="Idempotency-Key",
                    message=message,
                    type="idempotency_key_reused",
                )
            ],
        )
