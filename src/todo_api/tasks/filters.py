"""The filters of a task listing, and the SQL condition of each.

Every condition is always part of the listing statement and passes everything when its
parameter is NULL (`:completed IS NULL OR completed = :completed`), so a new filter adds no
statement shapes: the shapes are the sort orders times "first page or after a cursor"
(`repository.listing_shapes`). With the parameters known, PostgreSQL's planner drops the
branches that cannot apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from todo_api.platform.http.cursor import fingerprint
from todo_api.tables.tasks import tasks as _tasks

_completed = sa.bindparam("completed", type_=sa.Boolean)
_pattern = sa.bindparam("pattern", type_=sa.Text)
_since = sa.bindparam("updated_since", type_=_tasks.c.updated_at.type)

CONDITIONS: tuple[sa.ColumnElement[bool], ...] = (
    sa.or_(_completed.is_(None), _tasks.c.completed == _completed),
    # ILIKE on PostgreSQL (served by the trigram indexes), lower() LIKE lower() on SQLite.
    sa.or_(
        _pattern.is_(None),
        _tasks.c.title.ilike(_pattern, escape="\\"),
        _tasks.c.description.ilike(_pattern, escape="\\"),
    ),
    sa.or_(_since.is_(None), _tasks.c.updated_at >= _since),
)


@dataclass(frozen=True)
class TaskFilter:
    completed: bool | None = None
    q: str | None = None
    updated_since: datetime | None = None

    def fingerprint(self) -> str:
        since = self.updated_since.astimezone(UTC).isoformat() if self.updated_since else None
        return fingerprint([self.completed, self.q, since])

    def parameters(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "pattern": _contains_pattern(self.q) if self.q else None,
            "updated_since": self.updated_since,
        }


def _contains_pattern(text: str) -> str:
    # LIKE's wildcards in the search text are literal characters.
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
