"""The manual order of the tasks in a list: the ordered set `(user_id, list_id)`."""

from __future__ import annotations

import uuid
from typing import Any

from todo_api.platform.database.ordering import Ordering
from todo_api.tables.changes import stamped
from todo_api.tables.tasks import tasks

TASK_ORDER = Ordering(tasks, (tasks.c.user_id, tasks.c.list_id), stamped(tasks)).statements()
NOBODY = uuid.UUID(int=0)  # `moving_id` when no task of the set is moving


def list_scope(user_id: str, list_id: uuid.UUID) -> dict[str, Any]:
    return {"scope_user_id": user_id, "scope_list_id": list_id}
