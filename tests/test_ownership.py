"""Each user reaches only their own tasks.

Another user's task behaves exactly like one that does not exist: the same 404 problem on every
route, absent from every list, and never changed by anything the other user sends.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from support import PROBLEM, assert_problem, count_rows, stored_task

pytestmark = pytest.mark.through_pooler

OWNER = "alice"
OTHER = "bob"

# Every route addressing one task: (method, path after the task id, body).
TASK_ROUTES = [
    pytest.param("GET", "", None, id="get"),
    pytest.param("PUT", "", {"title": "hijacked", "completed": True}, id="put"),
    pytest.param("PATCH", "", {"title": "hijacked"}, id="patch"),
    pytest.param("PATCH", "", {"description": None}, id="patch-clear"),
    pytest.param("DELETE", "", None, id="delete"),
    pytest.param("PATCH", "/complete", None, id="toggle"),
    pytest.param("PATCH", "/complete", {"completed": True}, id="complete"),
    pytest.param("PATCH", "/complete", {"completed": False}, id="uncomplete"),
]


def task_url(user: str, task_id: str, suffix: str = "") -> str:
    return f"/api/{user}/tasks/{task_id}{suffix}"


async def create_task(client: httpx.AsyncClient, user: str, title: str) -> dict[str, Any]:
    response = await client.post(
        f"/api/{user}/tasks", json={"title": title, "description": f"{user}'s"}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def list_ids(client: httpx.AsyncClient, user: str, limit: int = 200) -> list[str]:
    """Every task id in the user's list, following cursors to the last page."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(f"/api/{user}/tasks", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [item["id"] for item in page["items"]]
        assert all(item["user_id"] == user for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


def without_id(problem: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The problem with the (necessarily different) task id masked out of the detail, and
    without the request id (each request has its own)."""
    masked = {key: value for key, value in problem.items() if key != "request_id"}
    return {**masked, "detail": problem["detail"].replace(task_id, "<id>")}


@pytest.mark.parametrize(("method", "suffix", "body"), TASK_ROUTES)
async def test_other_users_task_is_not_found(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    task = await create_task(client, OWNER, "Alice's secret")
    before = await stored_task(engine, task["id"])

    response = await client.request(method, task_url(OTHER, task["id"], suffix), json=body)

    assert_problem(response, 404)
    assert await stored_task(engine, task["id"]) == before


@pytest.mark.parametrize(("method", "suffix", "body"), TASK_ROUTES)
async def test_other_users_task_is_indistinguishable_from_a_missing_one(
    client: httpx.AsyncClient, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    task = await create_task(client, OWNER, "Alice's secret")
    await create_task(client, OTHER, "Bob's own")  # bob exists too: no "unknown user" path
    missing = str(uuid.uuid4())

    foreign = await client.request(method, task_url(OTHER, task["id"], suffix), json=body)
    absent = await client.request(method, task_url(OTHER, missing, suffix), json=body)

    foreign_problem = assert_problem(foreign, 404)
    absent_problem = assert_problem(absent, 404)
    assert without_id(foreign_problem, task["id"]) == without_id(absent_problem, missing)
    assert foreign.headers["content-type"] == absent.headers["content-type"]
    assert foreign.headers["content-type"].startswith(PROBLEM)
    assert set(foreign.headers) - {"content-length"} == set(absent.headers) - {"content-length"}


async def test_other_users_attempts_leave_the_task_unchanged(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    task = await create_task(client, OWNER, "Alice's secret")
    before = await stored_task(engine, task["id"])
    assert before is not None
    counts = (await count_rows(engine, "tasks"), await count_rows(engine, "users"))

    for route in TASK_ROUTES:
        method, suffix, body = route.values
        assert isinstance(method, str) and isinstance(suffix, str)
        response = await client.request(method, task_url(OTHER, task["id"], suffix), json=body)
        assert_problem(response, 404)

    after = await stored_task(engine, task["id"])
    assert after == before  # every column, updated_at included
    assert (await count_rows(engine, "tasks"), await count_rows(engine, "users")) == counts
    # And the owner still sees it exactly as before.
    fetched = await client.get(task_url(OWNER, task["id"]))
    assert fetched.status_code == 200
    assert fetched.json() == task


async def test_other_users_list_never_shows_the_owners_tasks(client: httpx.AsyncClient) -> None:
    alices = [await create_task(client, OWNER, f"alice {n}") for n in range(5)]
    bobs = [await create_task(client, OTHER, f"bob {n}") for n in range(3)]

    alice_ids = {task["id"] for task in alices}
    bob_ids = {task["id"] for task in bobs}
    for limit in (1, 2, 200):  # every page, whatever the page size
        assert set(await list_ids(client, OTHER, limit)) == bob_ids
        assert set(await list_ids(client, OWNER, limit)) == alice_ids


async def test_owners_cursor_does_not_reveal_their_tasks_to_another_user(
    client: httpx.AsyncClient,
) -> None:
    for n in range(3):
        await create_task(client, OWNER, f"alice {n}")
    bobs = {(await create_task(client, OTHER, f"bob {n}"))["id"] for n in range(2)}
    alices_first_page = await client.get(f"/api/{OWNER}/tasks", params={"limit": 1})
    cursor = alices_first_page.json()["next_cursor"]
    assert cursor

    response = await client.get(f"/api/{OTHER}/tasks", params={"cursor": cursor, "limit": 200})

    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert all(item["user_id"] == OTHER for item in items)
    assert {item["id"] for item in items} <= bobs


async def test_list_of_unknown_user_is_empty_not_404(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await create_task(client, OWNER, "Alice's")
    users = await count_rows(engine, "users")

    response = await client.get("/api/nobody-yet/tasks")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"items": [], "next_cursor": None}
    assert await count_rows(engine, "users") == users  # reading provisions no one


@pytest.mark.parametrize("other", ["ALICE", "Alice", "alice2", "alic", "alice_", "alice."])
async def test_similar_user_ids_are_different_owners(
    client: httpx.AsyncClient, engine: AsyncEngine, other: str
) -> None:
    task = await create_task(client, OWNER, "Alice's secret")
    before = await stored_task(engine, task["id"])

    listed = await client.get(f"/api/{other}/tasks")
    fetched = await client.get(task_url(other, task["id"]))
    deleted = await client.delete(task_url(other, task["id"]))

    assert listed.status_code == 200, listed.text
    assert listed.json()["items"] == []
    assert_problem(fetched, 404)
    assert_problem(deleted, 404)
    assert await stored_task(engine, task["id"]) == before


async def test_owner_deleting_makes_the_task_missing_for_everyone(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    task = await create_task(client, OWNER, "short-lived")
    assert (await client.delete(task_url(OWNER, task["id"]))).status_code == 204

    for user in (OWNER, OTHER):
        assert_problem(await client.get(task_url(user, task["id"])), 404)
    assert await stored_task(engine, task["id"]) is None
