"""Statements compiled once per dialect, through SQLAlchemy's public compiler API.

Statements are SQLAlchemy Core, built once (at import, or once per shape by a builder whose
shapes are bounded by construction). Compiling and hashing one costs more CPU than running
it, so an executor compiles each statement object the first time it sees it and keeps the
result for the life of the process (`StatementCache`): no eviction, because the set of
statements is fixed by the code, not by the requests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class Compiled:
    """A statement's SQL with positional (`$n`) parameters, and the conversions of its
    parameter and result values that the column types define for the dialect."""

    sql: str
    names: tuple[str, ...]  # the parameter behind $1, $2, …
    # Values SQLAlchemy bound itself, such as the 1 of `version + 1`.
    constants: Mapping[str, Any]
    binds: Mapping[str, Processor]
    results: tuple[tuple[int, Processor], ...]  # (column index, conversion)

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        values = []
        for name in self.names:
            value = parameters[name] if name in parameters else self.constants[name]
            process = self.binds.get(name)
            values.append(value if process is None or value is None else process(value))
        return values

    def row(self, record: Any) -> Sequence[Any]:
        # `record`: a driver's row (asyncpg's Record), indexable like a sequence.
        if not self.results:
            return record  # type: ignore[no-any-return]
        values = list(record)
        for index, process in self.results:
            values[index] = process(values[index])
        return values


def compile_positional(statement: sa.Executable, dialect: Dialect) -> Compiled:
    """Compile for a dialect with a positional paramstyle (asyncpg's `$n`)."""
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    if compiled.positiontup is None:
        raise TypeError(f"{dialect.name} compiles to named parameters, not positional ones")
    binds: Mapping[str, sa.BindParameter[Any]] = compiled.binds
    columns: Sequence[Any] = getattr(statement, "exported_columns", ())
    return Compiled(
        sql=compiled.string,
        names=tuple(compiled.positiontup),
        constants={name: bind.value for name, bind in binds.items() if not bind.required},
        binds={
            name: process
            for name, bind in binds.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        },
        results=tuple(
            (index, process)
            for index, column in enumerate(columns)
            if (process := column.type.dialect_impl(dialect).result_processor(dialect, None))
            is not None
        ),
    )


class StatementCache:
    """Compiled statements by statement object, for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._compiled: dict[sa.Executable, Compiled] = {}

    def __len__(self) -> int:
        return len(self._compiled)

    def __getitem__(self, statement: sa.Executable) -> Compiled:
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = compile_positional(statement, self._dialect)
        return compiled
