"""Colours as clients send them: `#rrggbb`, stored lower-case."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Strict, StringConstraints

COLOR_PATTERN = r"^#[0-9a-fA-F]{6}$"

Color = Annotated[
    str, Strict(), StringConstraints(pattern=COLOR_PATTERN), AfterValidator(str.lower)
]
