"""Fractional ordering keys: strings whose byte order is the order of the items they place.

Any two keys have room between them, so moving an item rewrites only that item. The digits
are base 62 in ASCII order (`0-9A-Za-z`), compared byte-wise (PostgreSQL needs
`COLLATE "C"` for that: its default collations order `a` before `B`). A key is read as a
base-62 fraction; no key ends in `0`, so there is always a key between two others
(rocicorp's fractional-indexing midpoint, which this follows).

Keys come from three places:
- `tail(now)`: an item appended at the end gets a key from the clock, `b` + 9 digits of
  microseconds + 3 random digits, so appending needs no read of the list (a create stays one
  statement). Later appends sort later; equal microseconds differ by their random digits.
- `between(a, b)`: moves. Repeated moves into the same gap grow a key by about one digit per
  six moves, so callers rebalance once a key would pass `MAX_LENGTH`.
- `ranked(i)`: a rebalanced list's keys, `a` + the rank in 9 decimal digits + `V`, computed
  in SQL in one UPDATE: all below every `tail` key, so appends still land last.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BASE = len(DIGITS)
_INDEX = {digit: value for value, digit in enumerate(DIGITS)}
MAX_LENGTH = 48
SPREAD_WIDTH = 9  # decimal digits of a rebalanced key's rank: room for 10**9 items
_TAIL_WIDTH = 9  # 62**9 microseconds: until the year 2398
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, BASE)
        digits.append(DIGITS[digit])
    if value:
        raise OverflowError(f"{value} does not fit in {width} base-62 digits")
    return "".join(reversed(digits))


def is_key(text: str) -> bool:
    return bool(text) and text[-1] != "0" and all(char in _INDEX for char in text)


def _midpoint(low: str, high: str | None) -> str:
    """A key strictly between the fractions `low` ("" is 0) and `high` (None is 1)."""
    if high is not None:
        # The common prefix stays; the midpoint is found in what follows it.
        shared = 0
        while (low[shared] if shared < len(low) else "0") == high[shared]:
            shared += 1
        if shared:
            return high[:shared] + _midpoint(low[shared:], high[shared:])
    low_digit = _INDEX[low[0]] if low else 0
    high_digit = _INDEX[high[0]] if high is not None else BASE
    if high_digit - low_digit > 1:
        return DIGITS[(low_digit + high_digit) // 2]
    # Adjacent digits: take the high one if more digits follow it, else extend the low one.
    if high is not None and len(high) > 1:
        return high[:1]
    return DIGITS[low_digit] + _midpoint(low[1:], None)


def between(before: str | None, after: str | None) -> str:
    """A key after `before` and before `after` (None: no bound on that side)."""
    if before is not None and after is not None and not before < after:
        raise ValueError(f"{before!r} is not before {after!r}")
    return _midpoint(before or "", after)


def tail(now: datetime, last: str | None = None) -> str:
    """The key of an item appended after `last` (the list's greatest key, when known)."""
    micros = (now - _EPOCH) // _MICROSECOND
    noise = _base62(secrets.randbelow(BASE**3 - BASE**2) + BASE**2, 3)
    if noise[-1] == "0":
        noise = noise[:-1] + "V"
    key = "b" + _base62(micros, _TAIL_WIDTH) + noise
    if last is not None and key <= last:  # a clock behind the last append: still after it
        key = last + between(None, None)
    return key


def ranked(rank: int) -> str:
    """The key a rebalance gives the item at `rank` (1-based); the SQL in `ordering` writes
    the same text (`a` + the rank in SPREAD_WIDTH decimal digits + `V`)."""
    return f"a{rank:0{SPREAD_WIDTH}d}V"


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - _EPOCH
