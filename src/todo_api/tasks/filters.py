"""The filters of a task listing, and the SQL condition of each.

Every condition is always part of the listing statement and passes everything when its
parameter is NULL (`:completed IS NULL OR completed = :completed`), so a new filter adds no
statement shapes: the shapes are the sort orders times "first page or after a cursor"
(`repository.listing_shapes`). With the parameters known, PostgreSQL's planner drops the
branches that cannot apply.

Due filters are evaluated in a zone (the user's, or `tz=`): "today" is that zone's date, so an
all-day task due today is not overdue before the zone's midnight. The exact test for a fixed
due compares its instant; all-day and floating dues compare their local date and time. Each
also has a coarse range on `due_sort` (the due's wall time in its own zone), which the
`(user_id, due_sort)` index serves. Two zones' wall clocks are up to 26 hours apart
(Pacific/Kiritimati is UTC+14, Etc/GMT+12 is UTC-12), so the range reaches two days before the
window and two days past its end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from todo_api.platform.http.cursor import fingerprint
from todo_api.platform.zones import zone
from todo_api.tables.labels import task_labels
from todo_api.tables.tasks import tasks as _tasks

# --- a parameter holding a list of ids, one statement text however many ----------------------


class in_id_list(FunctionElement[bool]):
    """`column` is one of the ids in the text parameter (see `id_list_parameter`)."""

    type = sa.Boolean()
    inherit_cache = True


@compiles(in_id_list, "postgresql")
def _in_id_list_postgresql(element: in_id_list, compiler: Any, **kw: Any) -> str:
    column, parameter = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"{column} = ANY(CAST(string_to_array({parameter}, ',') AS UUID[]))"


@compiles(in_id_list)
def _in_id_list_sqlite(element: in_id_list, compiler: Any, **kw: Any) -> str:
    column, parameter = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"{column} IN (SELECT value FROM json_each({parameter}))"


def id_list_parameter(ids: Sequence[uuid.UUID], dialect: str) -> str:
    # Text, not a uuid[]: an array parameter costs asyncpg a type lookup per connection.
    if dialect == "postgresql":
        return ",".join(str(item) for item in ids)
    return json.dumps([item.hex for item in ids])  # sa.Uuid stores 32 hex digits on SQLite


# --- conditions ----------------------------------------------------------------------------------


def _param(name: str, type_: Any) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


_completed = _param("completed", sa.Boolean)
_pattern = _param("pattern", sa.Text)
_since = _param("updated_since", _tasks.c.updated_at.type)
_list = _param("list_id", _tasks.c.list_id.type)
_priorities = [_param(f"priority_{index}", sa.SmallInteger) for index in range(4)]
_labels_any = _param("labels_any", sa.Text)
_labels_all = _param("labels_all", sa.Text)
_labels_all_count = _param("labels_all_count", sa.Integer)
_has_due = _param("has_due", sa.Boolean)
_DUE = _tasks.c.due_sort.type


def _labelled(ids: sa.BindParameter[Any]) -> sa.Select[Any]:
    """The task's rows in task_labels for these label ids."""
    return sa.select(task_labels.c.label_id).where(
        task_labels.c.user_id == _tasks.c.user_id,
        task_labels.c.task_id == _tasks.c.id,
        in_id_list(task_labels.c.label_id, ids),
    )


def window(prefix: str) -> sa.ColumnElement[bool]:
    """Due within local dates [from, to] of the evaluation zone; NULL `{prefix}_from_date`:
    no window."""
    from_date = _param(f"{prefix}_from_date", _tasks.c.due_date.type)
    to_date = _param(f"{prefix}_to_date", _tasks.c.due_date.type)
    return sa.or_(
        from_date.is_(None),
        sa.and_(
            _tasks.c.due_sort >= _param(f"{prefix}_low", _DUE),
            _tasks.c.due_sort < _param(f"{prefix}_high", _DUE),
            sa.or_(
                sa.and_(
                    _tasks.c.due_at.is_not(None),
                    _tasks.c.due_at >= _param(f"{prefix}_from_at", _tasks.c.due_at.type),
                    _tasks.c.due_at < _param(f"{prefix}_to_at", _tasks.c.due_at.type),
                ),
                sa.and_(
                    _tasks.c.due_at.is_(None),
                    _tasks.c.due_date >= from_date,
                    _tasks.c.due_date <= to_date,
                ),
            ),
        ),
    )


def overdue(prefix: str = "overdue") -> sa.ColumnElement[bool]:
    """Open and past due at the evaluation moment. NULL `{prefix}_now`: no condition."""
    now = _param(f"{prefix}_now", _tasks.c.due_at.type)
    return sa.or_(
        now.is_(None),
        sa.and_(
            _tasks.c.completed.is_(False),
            _tasks.c.due_sort < _param(f"{prefix}_high", _DUE),
            sa.or_(
                sa.and_(_tasks.c.due_at.is_not(None), _tasks.c.due_at < now),
                sa.and_(
                    _tasks.c.due_at.is_(None),
                    _tasks.c.due_time.is_(None),
                    _tasks.c.due_date < _param(f"{prefix}_today", _tasks.c.due_date.type),
                ),
                sa.and_(
                    _tasks.c.due_at.is_(None),
                    _tasks.c.due_time.is_not(None),
                    _tasks.c.due_sort < _param(f"{prefix}_local_now", _DUE),
                ),
            ),
        ),
    )


CONDITIONS: tuple[sa.ColumnElement[bool], ...] = (
    sa.or_(_completed.is_(None), _tasks.c.completed == _completed),
    # ILIKE on PostgreSQL (served by the trigram indexes), lower() LIKE lower() on SQLite.
    sa.or_(
        _pattern.is_(None),
        _tasks.c.title.ilike(_pattern, escape="\\"),
        _tasks.c.description.ilike(_pattern, escape="\\"),
    ),
    sa.or_(_since.is_(None), _tasks.c.updated_at >= _since),
    sa.or_(_list.is_(None), _tasks.c.list_id == _list),
    # Up to four priorities: unused slots repeat a used one (one statement text).
    sa.or_(_priorities[0].is_(None), _tasks.c.priority.in_(_priorities)),
    # EXISTS stops at the first label found; ALL has to count them.
    sa.or_(_labels_any.is_(None), _labelled(_labels_any).exists()),
    sa.or_(
        _labels_all.is_(None),
        _labelled(_labels_all).with_only_columns(sa.func.count()).scalar_subquery()
        == _labels_all_count,
    ),
    sa.or_(_has_due.is_(None), _tasks.c.due_date.is_not(None) == _has_due),
    overdue(),
    window("due"),
    window("range"),
)


# --- evaluation -----------------------------------------------------------------------------------


class DueFilter(StrEnum):
    OVERDUE = "overdue"
    TODAY = "today"
    TOMORROW = "tomorrow"
    NEXT_7_DAYS = "next_7_days"  # today and the six days after it
    NONE = "none"
    ANY = "any"


def _wall(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def window_parameters(
    prefix: str, first: date | None, last: date | None, zone_name: str
) -> dict[str, Any]:
    names = ("from_date", "to_date", "low", "high", "from_at", "to_at")
    if first is None and last is None:
        return {f"{prefix}_{name}": None for name in names}
    first = first or date.min + timedelta(days=3)
    last = last or date.max - timedelta(days=3)
    # The coarse bounds stop short of the ends of the calendar (due_from=0001-01-01 or
    # due_to=9999-12-31 overflowed there: a 500); the exact tests still decide.
    low = max(first, _FIRST) - timedelta(days=2)
    high = min(last, _LAST) + timedelta(days=3)
    local = zone(zone_name)
    return {
        f"{prefix}_from_date": first,
        f"{prefix}_to_date": last,
        f"{prefix}_low": _wall(low),
        f"{prefix}_high": _wall(high),
        f"{prefix}_from_at": _midnight(first, local, datetime.min),
        f"{prefix}_to_at": _midnight(last + timedelta(days=1), local, datetime.max)
        if last < date.max
        else datetime.max.replace(tzinfo=UTC),
    }


_FIRST = date.min + timedelta(days=2)
_LAST = date.max - timedelta(days=3)


def _midnight(day: date, local: Any, bound: datetime) -> datetime:
    """The UTC instant of the day's local midnight, or `bound` where that is off the calendar."""
    try:
        return datetime.combine(day, time.min, tzinfo=local).astimezone(UTC)
    except OverflowError:
        return bound.replace(tzinfo=UTC)


def overdue_parameters(
    now: datetime | None, zone_name: str, prefix: str = "overdue"
) -> dict[str, Any]:
    if now is None:
        return {f"{prefix}_{name}": None for name in ("now", "high", "today", "local_now")}
    local_now = now.astimezone(zone(zone_name))
    today = local_now.date()
    return {
        f"{prefix}_now": now,
        # Past due means before now, and now's wall clock in the due's zone can be 26 hours
        # ahead of the user's: up to 02:00 two days after today. A bound of +2 days missed
        # such dues during the user's last two hours of the day.
        f"{prefix}_high": _wall(today + timedelta(days=3)),
        f"{prefix}_today": today,
        # The local wall clock, labelled UTC like due_sort.
        f"{prefix}_local_now": local_now.replace(tzinfo=UTC),
    }


@dataclass(frozen=True)
class TaskFilter:
    completed: bool | None = None
    q: str | None = None
    updated_since: datetime | None = None
    list_id: uuid.UUID | None = None
    priorities: tuple[int, ...] = ()
    labels_any: tuple[uuid.UUID, ...] = ()
    labels_all: tuple[uuid.UUID, ...] = ()
    due: DueFilter | None = None
    due_from: date | None = None
    due_to: date | None = None
    # The zone due filters are evaluated in (None: they need the user's; see `needs_zone`).
    tz: str | None = None
    now: datetime | None = field(default=None, compare=False)

    @property
    def needs_zone(self) -> bool:
        return self.due not in (None, DueFilter.NONE, DueFilter.ANY) or bool(
            self.due_from or self.due_to
        )

    def fingerprint(self) -> str:
        # `now` is left out: a cursor stays valid while "today" moves on.
        since = self.updated_since.astimezone(UTC).isoformat() if self.updated_since else None
        return fingerprint(
            [
                self.completed,
                self.q,
                since,
                str(self.list_id) if self.list_id else None,
                sorted(self.priorities),
                sorted(map(str, self.labels_any)),
                sorted(map(str, self.labels_all)),
                self.due.value if self.due else None,
                self.due_from.isoformat() if self.due_from else None,
                self.due_to.isoformat() if self.due_to else None,
                self.tz,
            ]
        )

    def parameters(self, dialect: str, zone_name: str = "UTC") -> dict[str, Any]:
        zone_name = self.tz or zone_name
        now = self.now or datetime.now(UTC)
        today = now.astimezone(zone(zone_name)).date()
        priorities = list(self.priorities)
        slots = (priorities * 4)[:4] if priorities else [None] * 4
        window: tuple[date | None, date | None] = (None, None)
        if self.due is DueFilter.TODAY:
            window = (today, today)
        elif self.due is DueFilter.TOMORROW:
            window = (today + timedelta(days=1), today + timedelta(days=1))
        elif self.due is DueFilter.NEXT_7_DAYS:
            window = (today, today + timedelta(days=6))
        has_due = {DueFilter.NONE: False, DueFilter.ANY: True}.get(self.due) if self.due else None
        return {
            "completed": self.completed,
            "pattern": _contains_pattern(self.q) if self.q else None,
            "updated_since": self.updated_since,
            "list_id": self.list_id,
            **{f"priority_{index}": value for index, value in enumerate(slots)},
            "labels_any": id_list_parameter(self.labels_any, dialect) if self.labels_any else None,
            "labels_all": id_list_parameter(self.labels_all, dialect) if self.labels_all else None,
            "labels_all_count": len(self.labels_all),
            "has_due": has_due,
            **overdue_parameters(now if self.due is DueFilter.OVERDUE else None, zone_name),
            **window_parameters("due", *window, zone_name),
            **window_parameters("range", self.due_from, self.due_to, zone_name),
        }


def _contains_pattern(text: str) -> str:
    # LIKE's wildcards in the search text are literal characters.
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
