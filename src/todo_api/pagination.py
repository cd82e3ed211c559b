"""Opaque keyset cursors.

A cursor carries the sort key and id of the last task on a page; the next page continues
strictly after it, so inserts and deletes between requests never cause duplicates or skips
among tasks that existed throughout (which OFFSET cannot promise).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        payload = json.dumps(
            [self.created_at.isoformat(), self.id.hex], separators=(",", ":")
        ).encode()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            created_at, task_id = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
            moment = datetime.fromisoformat(created_at)
            if moment.tzinfo is None:
                raise InvalidCursor("cursor time has no zone")
            return cls(created_at=moment.astimezone(UTC), id=uuid.UUID(hex=task_id))
        # Edited cursors fail in many ways: a non-string id (AttributeError), a time at the
        # edge of the calendar (OverflowError), bad base64 or JSON (ValueError) ...
        except (ValueError, TypeError, AttributeError, OverflowError, binascii.Error) as error:
            raise InvalidCursor("malformed cursor") from error
