"""Text that every database can store, checked before it reaches one."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def storable_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded as UTF-8:
    # both would otherwise fail deep in the driver as a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def single_line(value: str) -> str:
    storable_text(value)
    if _CONTROL.search(value):
        raise ValueError("must be a single line without control characters")
    return value


# The same rules as JSON Schema patterns, published so that generated clients and fuzzers know
# them (the validators above enforce them, lone surrogates included, which JSON text from a
# UTF-8 client cannot carry anyway and which patterns cannot name portably).
STORABLE_PATTERN = r"^[^\x00]*$"
# One line, at least one character that is not white space (titles are trimmed).
SINGLE_LINE_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
