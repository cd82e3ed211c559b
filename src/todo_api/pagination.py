"""Listing parameters and opaque, tamper-evident keyset cursors.

A cursor carries the sort, a fingerprint of the filters, and the sort key and id of the last task
on a page; the next page continues strictly after it, so inserts and deletes between requests
never cause duplicates or skips among tasks that existed throughout (which OFFSET cannot
promise). A MAC makes edits detectable, and a cursor used with another sort or other filters is
refused instead of silently returning a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

SORT_FIELDS = ("created_at", "updated_at", "title")
ALLOWED_SORTS = tuple(f"{prefix}{field}" for field in SORT_FIELDS for prefix in ("", "-"))
DEFAULT_SORT = "-created_at"
MAC_BYTES = 12


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class Sort:
    field: str
    descending: bool

    @classmethod
    def parse(cls, value: str) -> Sort:
        if value not in ALLOWED_SORTS:
            raise ValueError(f"sort must be one of {', '.join(ALLOWED_SORTS)}")
        return cls(field=value.lstrip("-"), descending=value.startswith("-"))

    def __str__(self) -> str:
        return f"{'-' if self.descending else ''}{self.field}"

    @property
    def is_time(self) -> bool:
        return self.field != "title"


@dataclass(frozen=True)
class TaskFilter:
    completed: bool | None = None
    q: str | None = None
    updated_since: datetime | None = None

    def fingerprint(self) -> str:
        since = self.updated_since.astimezone(UTC).isoformat() if self.updated_since else None
        canonical = json.dumps([self.completed, self.q, since], separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cursor:
    sort: Sort
    scope: str  # TaskFilter.fingerprint() of the listing that issued it
    key: datetime | str  # the last item's sort value
    id: uuid.UUID

    _VERSION: ClassVar[int] = 1

    def encode(self, secret: bytes) -> str:
        key = self.key.isoformat() if isinstance(self.key, datetime) else self.key
        payload = json.dumps(
            [self._VERSION, str(self.sort), self.scope, key, self.id.hex],
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        mac = hmac.new(secret, payload, hashlib.sha256).digest()[:MAC_BYTES]
        return f"{_b64(payload)}.{_b64(mac)}"

    @classmethod
    def decode(cls, token: str, secret: bytes, *, sort: Sort, filters: TaskFilter) -> Cursor:
        """Raises InvalidCursor when malformed, edited, or issued for another sort or filter."""
        try:
            encoded_payload, encoded_mac = token.split(".")
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        except (ValueError, binascii.Error) as error:
            raise InvalidCursor("cursor is malformed") from error
        expected = hmac.new(secret, payload, hashlib.sha256).digest()[:MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise InvalidCursor("cursor was altered or was not issued by this service")
        version, sort_name, scope, key, task_id = _fields(payload)
        if version != cls._VERSION or sort_name != str(sort) or scope != filters.fingerprint():
            raise InvalidCursor(
                "cursor belongs to a listing with another sort or other filters; "
                "repeat the same sort and filters, or start again without a cursor"
            )
        try:
            value: datetime | str = _aware(key) if sort.is_time else str(key)
            return cls(sort=sort, scope=scope, key=value, id=uuid.UUID(hex=task_id))
        # An edited-but-signed cursor cannot exist; these guard against our own format changes.
        except (ValueError, TypeError, AttributeError, OverflowError) as error:
            raise InvalidCursor("cursor is malformed") from error


def _fields(payload: bytes) -> list[Any]:
    try:
        fields = json.loads(payload)
    except ValueError as error:
        raise InvalidCursor("cursor is malformed") from error
    if not isinstance(fields, list) or len(fields) != 5:
        raise InvalidCursor("cursor is malformed")
    return fields


def _aware(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError("cursor time is not a string")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("cursor time has no zone")
    return moment.astimezone(UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))
