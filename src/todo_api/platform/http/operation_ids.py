"""HTTP routes: health probes and the task API."""

from __future__ import annotations

from fastapi.routing import APIRoute


def operation_id(route: APIRoute) -> str:
    # Stable ids (`tasks-create_task`) give generated clients readable method names.
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name
