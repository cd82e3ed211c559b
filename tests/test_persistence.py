"""What was acknowledged survives a restart: a new app instance on the same database."""

from __future__ import annotations

import httpx
import pytest

from support import running, settings_for
from todo_api.settings import Settings

pytestmark = pytest.mark.through_pooler


async def test_tasks_survive_an_app_restart(settings: Settings) -> None:
    async with running(settings) as first:
        created = (await first.post("/api/alice/tasks", json={"title": "persist me"})).json()
        toggled = (await first.patch(f"/api/alice/tasks/{created['id']}/complete")).json()

    async with running(settings) as second:
        response = await second.get(f"/api/alice/tasks/{created['id']}")
        listing = (await second.get("/api/alice/tasks")).json()

    assert response.status_code == 200
    assert response.json() == toggled
    assert [task["id"] for task in listing["items"]] == [created["id"]]


async def test_a_cursor_survives_a_restart(settings: Settings) -> None:
    async with running(settings) as first:
        for i in range(3):
            await first.post("/api/alice/tasks", json={"title": f"t{i}"})
        page = (await first.get("/api/alice/tasks", params={"limit": 2})).json()

    async with running(settings) as second:
        rest = await second.get(
            "/api/alice/tasks", params={"limit": 2, "cursor": page["next_cursor"]}
        )
    assert rest.status_code == 200
    assert [task["title"] for task in rest.json()["items"]] == ["t0"]


async def test_startup_with_auto_migrate_on_a_current_schema_is_a_no_op(
    settings: Settings,
) -> None:
    migrating = settings.model_copy(update={"auto_migrate": True})
    async with running(migrating) as client:
        response: httpx.Response = await client.get("/health/ready")
    assert response.status_code == 200


async def test_an_in_memory_sqlite_database_is_migrated_and_usable() -> None:
    # The in-memory database lives in the engine's single connection: migrations must use it.
    async with running(settings_for("sqlite://", auto_migrate=True)) as client:
        ready = await client.get("/health/ready")
        created = await client.post("/api/alice/tasks", json={"title": "in memory"})
        listed = await client.get("/api/alice/tasks")
    assert ready.status_code == 200, ready.text
    assert created.status_code == 201
    assert [task["title"] for task in listed.json()["items"]] == ["in memory"]
