"""Opaque, tamper-evident keyset cursors.

A cursor carries the sort, a fingerprint of the filters (`scope`), and the sort key and id of
the last item on a page; the next page continues strictly after it, so inserts and deletes
between requests never cause duplicates or skips among items that existed throughout (which
OFFSET cannot promise). A MAC makes edits detectable, and a cursor used with another sort or
other filters is refused instead of silently returning a wrong page. The key is written by
the sort field's codec, so text, time, integer and NULL keys all survive the round trip.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Generic

from todo_api.platform.http.sorting import F, Sort

MAC_BYTES = 12


class InvalidCursor(ValueError):
    pass


def fingerprint(values: list[Any]) -> str:
    """A short, stable digest of a listing's filters (JSON-serialisable values)."""
    canonical = json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cursor(Generic[F]):
    sort: Sort[F]
    scope: str  # fingerprint of the filters of the listing that issued it
    key: Any  # the last item's sort value (None for a NULL key)
    id: uuid.UUID

    _VERSION: ClassVar[int] = 2

    def encode(self, secret: bytes) -> str:
        payload = json.dumps(
            [
                self._VERSION,
                str(self.sort),
                self.scope,
                self.sort.key.encode(self.key),
                self.id.hex,
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        mac = hmac.new(secret, payload, hashlib.sha256).digest()[:MAC_BYTES]
        return f"{_b64(payload)}.{_b64(mac)}"

    @classmethod
    def decode(cls, token: str, secret: bytes, *, sort: Sort[F], scope: str) -> Cursor[F]:
        """Raises InvalidCursor when malformed, edited, or issued for another sort or filter."""
        try:
            encoded_payload, encoded_mac = token.split(".")
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        except (ValueError, binascii.Error) as error:
            raise InvalidCursor("cursor is malformed") from error
        expected = hmac.new(secret, payload, hashlib.sha256).digest()[:MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise InvalidCursor("cursor was altered or was not issued by this service")
        version, sort_name, issued_scope, key, item_id = _fields(payload)
        if version != cls._VERSION or sort_name != str(sort) or issued_scope != scope:
            raise InvalidCursor(
                "cursor belongs to a listing with another sort or other filters; "
                "repeat the same sort and filters, or start again without a cursor"
            )
        try:
            return cls(sort=sort, scope=scope, key=sort.key.decode(key), id=uuid.UUID(hex=item_id))
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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))
