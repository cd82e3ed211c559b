"""Manual order in SQL: the statements that place one row of an ordered set (a list's tasks,
a user's lists) among the others, with keys from `todo_api.platform.positions`.

A set is a table and the columns that scope it (`user_id`, and `list_id` for tasks); its rows
have an `id` and a unique `position` within the scope. `Ordering` builds, once per set:
- the neighbours of an anchor (the key on either side of the gap a moved row goes into);
- the first and last keys;
- the rebalance: the scope's rows get short evenly ranked keys in one UPDATE (after moving
  them out of the way, so the unique constraint never sees two equal keys mid-statement).
Callers run these inside a transaction that has locked the scope (a parent row FOR UPDATE),
so two moves into the same gap cannot compute the same key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from todo_api.platform.database.executors import Session
from todo_api.platform.positions import MAX_LENGTH, SPREAD_WIDTH, between, tail


class ranked_key(FunctionElement[str]):
    """`a` + the rank in SPREAD_WIDTH decimal digits + `V` (= positions.ranked(rank))."""

    type = sa.Text()
    inherit_cache = True


@compiles(ranked_key, "postgresql")
def _ranked_key_postgresql(element: ranked_key, compiler: Any, **kw: Any) -> str:
    rank = compiler.process(element.clauses, **kw)
    return f"('a' || lpad(CAST({rank} AS TEXT), {SPREAD_WIDTH}, '0') || 'V')"


@compiles(ranked_key)
def _ranked_key_sqlite(element: ranked_key, compiler: Any, **kw: Any) -> str:
    rank = compiler.process(element.clauses, **kw)
    return f"printf('a%0{SPREAD_WIDTH}dV', {rank})"


class AnchorNotFound(Exception):
    """The anchor is not in the destination set (or is the row being moved)."""


@dataclass(frozen=True)
class Ordering:
    table: sa.Table
    scope: tuple[sa.Column[Any], ...]  # the columns whose values name the set
    # What else every rewritten key sets (the table's change stamp).
    stamp: Mapping[str, sa.ColumnElement[Any]] = field(default_factory=dict)

    def _in_scope(self) -> list[sa.ColumnElement[bool]]:
        return [
            column == sa.bindparam(f"scope_{column.key}", type_=column.type)
            for column in self.scope
        ]

    @property
    def _position(self) -> sa.Column[Any]:
        return self.table.c.position

    def _moving(self) -> sa.ColumnElement[bool]:
        return self.table.c.id != sa.bindparam("moving_id", type_=self.table.c.id.type)

    def statements(self) -> _Statements:
        position, table = self._position, self.table
        anchor = sa.select(position).where(
            *self._in_scope(), table.c.id == sa.bindparam("anchor_id", type_=table.c.id.type)
        )
        pivot = sa.bindparam("pivot", type_=position.type)
        base = sa.select(position).where(*self._in_scope(), self._moving())
        rows = sa.select(table.c.id).where(*self._in_scope())
        ranks = (
            sa.select(
                *(column.label(f"r_{column.key}") for column in (*self.scope, table.c.id)),
                sa.func.row_number().over(order_by=position).label("rank"),
            )
            .where(*self._in_scope())
            .subquery("ranks")
        )
        now = sa.bindparam("now", type_=table.c.updated_at.type)
        return _Statements(
            anchor=anchor,
            after=base.where(position > pivot).order_by(position).limit(1),
            before=base.where(position < pivot).order_by(position.desc()).limit(1),
            first=base.order_by(position).limit(1),
            last=base.order_by(position.desc()).limit(1),
            # Out of the way first: "~" sorts after every key digit, and keeps them unique.
            park=sa.update(table)
            .where(*self._in_scope())
            .values(position="~" + position, **self.stamp),
            spread=sa.update(table)
            .where(*(column == ranks.c[f"r_{column.key}"] for column in (*self.scope, table.c.id)))
            .values(
                position=ranked_key(ranks.c.rank),
                updated_at=now,
                version=table.c.version + 1,
                **self.stamp,
            ),
            count=sa.select(sa.func.count()).select_from(rows.subquery()),
        )


@dataclass(frozen=True)
class _Statements:
    anchor: sa.Select[Any]
    after: sa.Select[Any]
    before: sa.Select[Any]
    first: sa.Select[Any]
    last: sa.Select[Any]
    park: sa.Update
    spread: sa.Update
    count: sa.Select[Any]


async def _key(session: Session, rows: Sequence[Sequence[Any]]) -> str | None:
    return str(rows[0][0]) if rows else None


async def place(
    session: Session,
    statements: _Statements,
    scope: Mapping[str, Any],
    *,
    moving_id: Any,
    after_id: Any | None = None,
    before_id: Any | None = None,
    now: Any,
) -> str:
    """The key that puts `moving_id` right after `after_id`, right before `before_id`, or
    (neither) first, in the set named by `scope` (`{"scope_user_id": …}`). Rebalances the set
    first when that key would be longer than MAX_LENGTH. Raises AnchorNotFound."""
    parameters: dict[str, Any] = {**scope, "moving_id": moving_id, "now": now}
    for _ in range(2):
        low, high = await _gap(session, statements, parameters, after_id, before_id)
        # After the last row: a clock key (as appends get), not `between(low, None)`, which
        # would sort after every later append (`tail` keys are read-free, from the clock).
        key = between(low, high) if high is not None else tail(now, low)
        if len(key) <= MAX_LENGTH:
            return key
        await session.rows(statements.park, parameters)
        await session.rows(statements.spread, parameters)
    raise AssertionError("a rebalanced set has short keys")  # pragma: no cover


async def _gap(
    session: Session,
    statements: _Statements,
    parameters: dict[str, Any],
    after_id: Any | None,
    before_id: Any | None,
) -> tuple[str | None, str | None]:
    anchor_id = after_id if after_id is not None else before_id
    if anchor_id is None:
        return None, await _key(session, await session.rows(statements.first, parameters))
    if anchor_id == parameters["moving_id"]:
        raise AnchorNotFound(anchor_id)
    anchor = await _key(
        session, await session.rows(statements.anchor, parameters | {"anchor_id": anchor_id})
    )
    if anchor is None:
        raise AnchorNotFound(anchor_id)
    if after_id is not None:
        return anchor, await _key(
            session, await session.rows(statements.after, parameters | {"pivot": anchor})
        )
    return await _key(
        session, await session.rows(statements.before, parameters | {"pivot": anchor})
    ), anchor


async def last_key(
    session: Session, statements: _Statements, scope: Mapping[str, Any], *, moving_id: Any
) -> str | None:
    return await _key(
        session, await session.rows(statements.last, {**scope, "moving_id": moving_id})
    )
