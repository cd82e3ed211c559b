"""Sync tokens: an opaque, signed position in a user's change feed.

A position is (change_seq, kind, id) of the last change a client has, plus `since`: the
user's sequence when a full sync (no token) began. A full sync sends live rows only, so
deletions at or before `since` are of rows the client never got and are skipped; later ones
are sent. The MAC (CURSOR_SECRET) makes an edited token detectable, and the token names its
user, so another user's token is refused rather than read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any

from todo_api.sync.errors import InvalidSyncToken

MAC_BYTES = 12
VERSION = 1
# The feed's order among rows of one change_seq: kind, then id (byte order).
FIRST_ID = uuid.UUID(int=0)
LAST_ID = uuid.UUID(int=2**128 - 1)
LAST_KIND = "task"


@dataclass(frozen=True)
class Position:
    seq: int
    kind: str
    id: uuid.UUID
    since: int

    def after_id(self, kind: str) -> uuid.UUID:
        """The id bound of `kind`'s rows at `seq`: (change_seq, id) > (seq, this)."""
        if kind < self.kind:
            return LAST_ID  # its rows at `seq` come before the position
        if kind > self.kind:
            return FIRST_ID  # all of its rows at `seq` come after
        return self.id

    def encode(self, user_id: str, secret: bytes) -> str:
        payload = json.dumps(
            [VERSION, _owner(user_id), self.seq, self.kind, self.id.hex, self.since],
            separators=(",", ":"),
        ).encode()
        mac = hmac.new(secret, payload, hashlib.sha256).digest()[:MAC_BYTES]
        return f"{_b64(payload)}.{_b64(mac)}"

    @classmethod
    def decode(cls, token: str, user_id: str, secret: bytes) -> Position:
        try:
            encoded_payload, encoded_mac = token.split(".")
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        except (ValueError, binascii.Error):
            raise InvalidSyncToken("is malformed") from None
        expected = hmac.new(secret, payload, hashlib.sha256).digest()[:MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise InvalidSyncToken("was altered or was not issued by this service")
        fields: Any = json.loads(payload)
        if not isinstance(fields, list) or len(fields) != 6 or fields[0] != VERSION:
            raise InvalidSyncToken("is malformed")
        _version, owner, seq, kind, id_hex, since = fields
        if owner != _owner(user_id):
            raise InvalidSyncToken("was issued for another user")
        return cls(seq=seq, kind=kind, id=uuid.UUID(hex=id_hex), since=since)


def _owner(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))
