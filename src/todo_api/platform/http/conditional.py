"""ETags and the If-Match / If-None-Match headers (RFC 9110 §13).

A task's ETag is its version in quotes (`"3"`). If-Match uses strong comparison (a weak tag
never matches); If-None-Match uses weak comparison.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Protocol, TypeVar

from fastapi import Header

from todo_api.platform.http.problems import BadRequest, PreconditionFailed

_VERSION = re.compile(r"[0-9]{1,9}")

# RFC 9110 §8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, etagc = visible ASCII but DQUOTE
# (a comma included). The header is `*` or a comma-separated list of them; the schema
# publishes the same pattern the parser enforces (a malformed header is answered 400).
_TAG = r'(W/)?"([!#-~]*)"'
ENTITY_TAGS = rf"^[ \t]*(\*|{_TAG}([ \t]*,[ \t]*{_TAG})*)[ \t]*$"
_HEADER = re.compile(ENTITY_TAGS)
_TAGS = re.compile(_TAG)

IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Only change the task if its ETag is one of these (e.g. `"3"`); else 412.',
        json_schema_extra={"pattern": ENTITY_TAGS},
    ),
]
IfNoneMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description="Answer 304 without a body if the task's ETag is one of these.",
        json_schema_extra={"pattern": ENTITY_TAGS},
    ),
]


class Versioned(Protocol):
    """Anything with a version counter (a task today; lists and labels next)."""

    @property
    def version(self) -> int: ...


def etag(resource: Versioned) -> str:
    return f'"{resource.version}"'


def _tags(header: str) -> list[tuple[bool, str]]:
    """(weak, opaque tag) for each entity tag in a header value."""
    if not _HEADER.fullmatch(header):
        raise BadRequest(
            f'malformed entity tags {header.strip()[:40]!r}: use quoted ETags such as "3", '
            "separated by commas, or *"
        )
    return [(weak == "W/", tag) for weak, tag in _TAGS.findall(header)]


def if_match_versions(header: str | None) -> list[int] | None:
    """The versions If-Match allows; None when any version will do (absent or `*`)."""
    if header is None or header.strip() == "*":
        return None
    # Strong comparison: weak tags never match; nor do tags this service never issued.
    # Versions are int4 in the database: a longer number cannot match and must not reach SQL.
    return [int(tag) for weak, tag in _tags(header) if not weak and _VERSION.fullmatch(tag)]


def none_match(header: str | None, resource: Versioned) -> bool:
    """True when If-None-Match matches the resource's current ETag (answer 304)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return any(tag == str(resource.version) for _weak, tag in _tags(header))


class StaleVersion(PreconditionFailed):
    """If-Match named versions the resource no longer has."""

    def __init__(self, current: Versioned, what: str) -> None:
        tag = etag(current)
        super().__init__(
            f"If-Match does not match the {what}'s current ETag {tag}; "
            "fetch it again and retry with that ETag",
            headers={"ETag": tag},
        )
        self.current = current


V = TypeVar("V", bound=Versioned)


def allows(if_match: Sequence[int] | None, version: int) -> bool:
    """Whether If-Match (its versions from `if_match_versions`) lets a write change `version`."""
    return if_match is None or version in if_match


def unless_stale(current: V | None, if_match: Sequence[int] | None, what: str) -> V | None:
    """A write with nothing to change answers the resource as it is, or 412 like any write
    when If-Match names other versions. None: it does not exist."""
    if current is not None and not allows(if_match, current.version):
        raise StaleVersion(current, what)
    return current


async def stale_or_missing(
    read: Callable[[], Awaitable[Versioned | None]], if_match: Sequence[int] | None, what: str
) -> None:
    """A guarded write matched no row: 412 if the resource exists (at another version, read
    after the write), else return: it is missing (404 for the caller)."""
    if if_match is not None:
        current = await read()
        if current is not None:
            raise StaleVersion(current, what)
