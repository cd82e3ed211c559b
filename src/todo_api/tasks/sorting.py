"""The orders a task listing can be sorted in: each a column of the tasks table."""

from __future__ import annotations

from enum import Enum

from todo_api.platform.http.sorting import Sort, SortField, allowed_sorts
from todo_api.tables.tasks import tasks as _tasks


class TaskSortField(Enum):
    """Sortable task fields. A member needs an index `(user_id, <column>, id)` (tables.tasks)
    to keep each page an index range scan (`position`: `(user_id, list_id, position)`)."""

    CREATED_AT = SortField.of(_tasks.c.created_at)
    UPDATED_AT = SortField.of(_tasks.c.updated_at)
    TITLE = SortField.of(_tasks.c.title)
    COMPLETED_AT = SortField.of(_tasks.c.completed_at)  # NULL (open tasks) sorts last
    # The due's wall-clock time; tasks without one come last in both directions.
    DUE = SortField.of(_tasks.c.due_sort, name="due", nulls_last=True)
    PRIORITY = SortField.of(_tasks.c.priority)  # -priority: high first
    POSITION = SortField.of(_tasks.c.position)  # manual order; only within one list


TaskSort = Sort[TaskSortField]
DEFAULT_SORT: TaskSort = Sort(TaskSortField.CREATED_AT, descending=True)
ALLOWED_SORTS = allowed_sorts(TaskSortField)


def parse_sort(value: str) -> TaskSort:
    return Sort.parse(value, TaskSortField)
