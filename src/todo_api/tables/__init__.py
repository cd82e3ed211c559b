"""The database tables, one module each; importing this package registers them all on
`SQLModel.metadata` (Alembic's target), with the constraint naming convention below.

Tables (`table=True`) do not validate on construction (fastapi/sqlmodel#52): input is only
accepted through the non-table models of each domain's `schemas`; the database constraints
back the same rules.
"""

from __future__ import annotations

from sqlmodel import SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

from todo_api.tables.changes import ChangePending, EventTicket, Tombstone  # noqa: E402
from todo_api.tables.idempotency_keys import IdempotencyKey  # noqa: E402
from todo_api.tables.labels import Label, TaskLabel  # noqa: E402
from todo_api.tables.lists import TaskList  # noqa: E402
from todo_api.tables.tasks import Task, TaskFields  # noqa: E402
from todo_api.tables.users import USER_ID_MAX, USER_ID_PATTERN, User  # noqa: E402

metadata = SQLModel.metadata

__all__ = [
    "USER_ID_MAX",
    "USER_ID_PATTERN",
    "ChangePending",
    "EventTicket",
    "IdempotencyKey",
    "Label",
    "Task",
    "TaskFields",
    "TaskLabel",
    "TaskList",
    "Tombstone",
    "User",
    "metadata",
]
