"""Keyset pagination: every task exactly once, even while tasks are added and removed."""

from __future__ import annotations

import httpx
import pytest

from support import assert_problem

pytestmark = pytest.mark.through_pooler


async def add_tasks(client: httpx.AsyncClient, count: int, prefix: str = "t") -> list[str]:
    ids = []
    for i in range(count):
        response = await client.post("/api/alice/tasks", json={"title": f"{prefix}{i}"})
        assert response.status_code == 201
        ids.append(response.json()["id"])
    return ids


async def walk(client: httpx.AsyncClient, limit: int) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/alice/tasks", params=params)).json()
        assert len(page["items"]) <= limit
        seen += [task["id"] for task in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


async def test_default_page_is_50_with_a_cursor(client: httpx.AsyncClient) -> None:
    await add_tasks(client, 51)
    page = (await client.get("/api/alice/tasks")).json()
    assert len(page["items"]) == 50
    assert isinstance(page["next_cursor"], str)
    rest = (await client.get("/api/alice/tasks", params={"cursor": page["next_cursor"]})).json()
    assert len(rest["items"]) == 1
    assert rest["next_cursor"] is None


@pytest.mark.parametrize("limit", [1, 3, 7, 200])
async def test_walking_pages_returns_every_task_once_in_order(
    client: httpx.AsyncClient, limit: int
) -> None:
    ids = await add_tasks(client, 20)
    assert await walk(client, limit) == ids[::-1]


async def test_exact_multiple_of_page_size_ends_with_null_cursor(client: httpx.AsyncClient) -> None:
    await add_tasks(client, 4)
    first = (await client.get("/api/alice/tasks", params={"limit": 2})).json()
    second = (
        await client.get("/api/alice/tasks", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert len(second["items"]) == 2
    # The page size is fetched plus one, so the last full page already knows it is the last.
    assert second["next_cursor"] is None


async def test_walk_while_tasks_are_added_and_deleted(client: httpx.AsyncClient) -> None:
    original = await add_tasks(client, 30)
    deleted = set(original[5:30:6])
    survivors = [task_id for task_id in original if task_id not in deleted]

    seen: list[str] = []
    cursor: str | None = None
    round_ = 0
    while True:
        params: dict[str, str | int] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/alice/tasks", params=params)).json()
        seen += [task["id"] for task in page["items"]]
        cursor = page["next_cursor"]
        # Between pages: new tasks arrive and some not-yet-seen ones are deleted.
        await add_tasks(client, 2, prefix=f"new{round_}-")
        for task_id in list(deleted):
            if task_id not in seen and round_ % 2 == 0:
                assert (await client.delete(f"/api/alice/tasks/{task_id}")).status_code == 204
                deleted.discard(task_id)
                break
        round_ += 1
        if cursor is None:
            break

    assert len(seen) == len(set(seen)), "a task was returned twice"
    missing = [task_id for task_id in survivors if task_id not in seen]
    assert not missing, "a task that existed throughout was skipped"


async def test_cursor_of_a_deleted_task_still_continues(client: httpx.AsyncClient) -> None:
    ids = await add_tasks(client, 5)
    first = (await client.get("/api/alice/tasks", params={"limit": 2})).json()
    last_seen = first["items"][-1]["id"]
    assert (await client.delete(f"/api/alice/tasks/{last_seen}")).status_code == 204
    rest = (
        await client.get("/api/alice/tasks", params={"limit": 10, "cursor": first["next_cursor"]})
    ).json()
    assert [task["id"] for task in rest["items"]] == ids[::-1][2:]


@pytest.mark.parametrize("cursor", ["not-a-cursor", "e30", "W10", "%%%", "WyJ4IiwieSJd"])
async def test_malformed_cursor_is_400(client: httpx.AsyncClient, cursor: str) -> None:
    body = assert_problem(await client.get("/api/alice/tasks", params={"cursor": cursor}), 400)
    assert "cursor" in body["detail"]
