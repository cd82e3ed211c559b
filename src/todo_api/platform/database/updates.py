"""UPDATE statements that serve every partial update with one statement text.

Each field is set only when its `set_<field>` flag is true (`column = CASE WHEN :set_f THEN
:value_column ELSE column END`), so a PATCH of any subset of fields is the same statement
(one compiled shape instead of 2^n), and the change is still a single UPDATE with no read
first. A field may set several columns (a due date sets five).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa


def flagged_values(
    table: sa.Table, fields: Mapping[str, Iterable[str]]
) -> dict[str, sa.ColumnElement[Any]]:
    """The SET clause: each column of each field, from `value_<column>` when `set_<field>`."""
    values: dict[str, sa.ColumnElement[Any]] = {}
    for field, columns in fields.items():
        flag = sa.bindparam(f"set_{field}", type_=sa.Boolean)
        for name in columns:
            value = sa.bindparam(f"value_{name}", type_=table.c[name].type)
            values[name] = sa.case((flag, value), else_=table.c[name])
    return values


def versioned(table: sa.Table) -> dict[str, sa.ColumnElement[Any]]:
    """What every change sets besides its fields: `updated_at` (`:now`) and the version."""
    return {
        "updated_at": sa.bindparam("now", type_=table.c.updated_at.type),
        "version": table.c.version + 1,
    }


def flag_parameters(
    fields: Mapping[str, Iterable[str]], changed: Iterable[str], columns: Mapping[str, Any]
) -> dict[str, Any]:
    """Parameters of `flagged_values`: the fields in `changed` are set, to `columns` (by
    column name); the others keep their values."""
    present = set(changed)
    parameters: dict[str, Any] = {}
    for field, names in fields.items():
        parameters[f"set_{field}"] = field in present
        for name in names:
            parameters[f"value_{name}"] = columns.get(name)
    return parameters
