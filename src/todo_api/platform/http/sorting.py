"""Sort orders over typed keys: what `?sort=` accepts, and how a key travels in a cursor.

A domain declares its sortable fields as an `Enum` whose members are `SortField`s made from
table columns (`SortField.of(column)`): the key's type and whether it can be NULL come from
the column, so the cursor codec and the keyset condition follow without further lists.
NULL sorts after every value (PostgreSQL's default for ascending order, made explicit so
SQLite agrees), or, for a field made with `nulls_last=True`, last in both directions (tasks
without a due date come after the others whichever way they are sorted).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

Json = str | int | bool | None


@dataclass(frozen=True)
class KeyCodec:
    """How a sort key is written into a cursor's JSON and read back (ValueError: invalid)."""

    name: str
    encode: Callable[[Any], Json]
    decode: Callable[[Json], Any]


def _time(value: Json) -> datetime:
    if not isinstance(value, str):
        raise ValueError("cursor time is not a string")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("cursor time has no zone")
    return moment.astimezone(UTC)


def _typed(kind: type) -> Callable[[Json], Any]:
    def decode(value: Json) -> Any:
        # bool is an int in Python: an integer key must not accept `true`.
        if type(value) is not kind:
            raise ValueError(f"cursor key is not a {kind.__name__}")
        return value

    return decode


TEXT = KeyCodec("text", str, _typed(str))
TIME = KeyCodec("time", lambda value: value.isoformat(), _time)
INTEGER = KeyCodec("integer", int, _typed(int))
BOOLEAN = KeyCodec("boolean", bool, _typed(bool))
UUID = KeyCodec("uuid", lambda value: value.hex, lambda value: uuid.UUID(hex=str(value)))
_CODECS: dict[type, KeyCodec] = {
    str: TEXT,
    datetime: TIME,
    int: INTEGER,
    bool: BOOLEAN,
    uuid.UUID: UUID,
}


@dataclass(frozen=True)
class SortField:
    name: str
    codec: KeyCodec
    nullable: bool
    always_nulls_last: bool = False
    column: str | None = None  # the column sorted on, when it is not named like the field

    @classmethod
    def of(
        cls, column: sa.ColumnElement[Any], *, name: str | None = None, nulls_last: bool = False
    ) -> SortField:
        codec = _CODECS.get(column.type.python_type)
        if codec is None:
            raise TypeError(f"no cursor codec for {column.type.python_type} ({column})")
        nullable = column.nullable if isinstance(column, sa.Column) else True
        return cls(
            name=name or str(column.key),
            codec=codec,
            nullable=bool(nullable),
            always_nulls_last=nulls_last,
            column=str(column.key),
        )

    def nulls_last(self, descending: bool) -> bool:
        """Whether NULL keys come after the values in this direction."""
        return self.always_nulls_last or not descending

    def encode(self, value: Any) -> Json:
        return None if value is None else self.codec.encode(value)

    def decode(self, value: Json) -> Any:
        if value is None:
            if not self.nullable:
                raise ValueError(f"{self.name} cannot be null")
            return None
        return self.codec.decode(value)


F = TypeVar("F", bound=Enum)


@dataclass(frozen=True)
class Sort(Generic[F]):
    """One order: a field (a member of a domain's sort enum) and a direction."""

    field: F
    descending: bool

    @property
    def key(self) -> SortField:
        key: SortField = self.field.value
        return key

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def column(self) -> str:
        return self.key.column or self.key.name

    @classmethod
    def parse(cls, value: str, fields: type[F]) -> Sort[F]:
        """`created_at` or `-created_at`; ValueError naming the allowed values otherwise."""
        name = value.removeprefix("-")
        for member in fields:
            if member.value.name == name:
                return cls(field=member, descending=value.startswith("-"))
        raise ValueError(f"sort must be one of {', '.join(allowed_sorts(fields))}")

    def __str__(self) -> str:
        return f"{'-' if self.descending else ''}{self.name}"


def allowed_sorts(fields: type[Enum]) -> tuple[str, ...]:
    return tuple(f"{prefix}{member.value.name}" for member in fields for prefix in ("", "-"))
