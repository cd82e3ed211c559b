"""JSON answers built straight from values the data layer made."""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel


def json_response(
    value: BaseModel | bytes,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    *,
    exclude_unset: bool = False,
) -> Response:
    """Serialised once, here: routes return a Response, so FastAPI does not validate a second
    time what the data layer built (the route's response_model still documents it). `bytes`:
    already serialised (a dataclass through its TypeAdapter)."""
    if isinstance(value, BaseModel):
        value = value.model_dump_json(exclude_unset=exclude_unset).encode()
    return Response(value, status_code, headers, "application/json")
