"""Concurrent requests on one user: atomic toggles, safe first-write provisioning."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from support import count_rows, stored_task

pytestmark = pytest.mark.through_pooler


async def test_concurrent_toggles_are_never_lost(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    task = (await client.post("/api/alice/tasks", json={"title": "flip"})).json()
    url = f"/api/alice/tasks/{task['id']}/complete"

    responses = await asyncio.gather(*(client.patch(url) for _ in range(51)))

    assert [r.status_code for r in responses] == [200] * 51
    # Each toggle saw a distinct state: 26 answered "completed", 25 answered "not completed".
    assert sum(r.json()["completed"] for r in responses) == 26
    row = await stored_task(engine, task["id"])
    assert row is not None and bool(row["completed"]) is True  # odd number of flips


async def test_concurrent_first_writes_provision_the_user_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    responses = await asyncio.gather(
        *(client.post("/api/newcomer/tasks", json={"title": f"t{i}"}) for i in range(50))
    )
    assert [r.status_code for r in responses] == [201] * 50
    assert await count_rows(engine, "users") == 1
    assert await count_rows(engine, "tasks") == 50
    listing = (await client.get("/api/newcomer/tasks", params={"limit": 200})).json()
    assert len(listing["items"]) == 50


async def test_concurrent_patches_of_different_fields_both_land(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    task = (await client.post("/api/alice/tasks", json={"title": "a"})).json()
    url = f"/api/alice/tasks/{task['id']}"
    await asyncio.gather(
        client.patch(url, json={"description": "described"}),
        client.patch(url, json={"completed": True}),
    )
    row = await stored_task(engine, task["id"])
    assert row is not None
    assert (row["description"], bool(row["completed"])) == ("described", True)
