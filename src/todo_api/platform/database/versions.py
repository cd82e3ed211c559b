"""If-Match inside the statement: the row changes only when its version is one of those the
client named, so the check cannot race with another write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


def versions_match(version: sa.ColumnElement[int], dialect: str) -> sa.ColumnElement[bool]:
    """On PostgreSQL `version = ANY(…)` with one parameter (one statement text however many
    tags); an expanding IN on SQLite. Parameter: `versions` (see `versions_parameter`).

    The versions travel as text ("3,5") turned into an int[] by the server: an int[] parameter
    makes asyncpg look the array type up on each new connection first (8 round trips,
    measured), on the request that happens to use it."""
    if dialect == "postgresql":
        versions = sa.cast(
            sa.func.string_to_array(sa.bindparam("versions", type_=sa.Text), ","),
            postgresql.ARRAY(sa.Integer),
        )
        return version == sa.any_(versions)
    return version.in_(sa.bindparam("versions", expanding=True))


def versions_parameter(if_match: Sequence[int], dialect: str) -> Any:
    versions = list(if_match)
    return ",".join(map(str, versions)) if dialect == "postgresql" else versions
