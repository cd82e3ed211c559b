"""What can go wrong with a task request, each error with the answer it gets."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from todo_api.lists.errors import ListNotFound
from todo_api.platform.http.conditional import StaleVersion as StaleResource
from todo_api.platform.http.problems import (
    FieldError,
    NotFound,
    UnprocessableContent,
)

if TYPE_CHECKING:
    from todo_api.tasks.schemas import TaskRead


class TaskNotFound(NotFound):
    def __init__(self, task_id: uuid.UUID) -> None:
        # Identical whether the task never existed or belongs to someone else: no existence
        # leak.
        super().__init__(f"No task {task_id} for this user")


class TasksNotFound(NotFound):
    def __init__(self, task_ids: list[uuid.UUID]) -> None:
        named = ", ".join(map(str, task_ids[:10])) + (" …" if len(task_ids) > 10 else "")
        super().__init__(f"No task {named} for this user; nothing was changed")


class LabelsNotFound(UnprocessableContent):
    """Label ids that are not the user's live labels."""

    def __init__(self, label_ids: list[uuid.UUID]) -> None:
        named = ", ".join(map(str, label_ids[:10])) + (" …" if len(label_ids) > 10 else "")
        message = f"not one of the user's labels: {named}"
        super().__init__(
            f"label_ids: {message}",
            errors=[
                FieldError(
                    location="body", field="label_ids", message=message, type="label_not_found"
                )
            ],
        )


class StaleVersion(StaleResource):
    """If-Match named versions the task no longer has; `current` is what it is now."""

    def __init__(self, current: TaskRead) -> None:
        super().__init__(current, "task")
        self.current: TaskRead = current


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


__all__ = [
    "IdempotencyKeyReused",
    "LabelsNotFound",
    "ListNotFound",
    "StaleVersion",
    "TaskNotFound",
    "TasksNotFound",
]
