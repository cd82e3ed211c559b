"""CRUD and completion through HTTP, checked against what the database stores."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from support import assert_problem, count_rows, stored_task

pytestmark = pytest.mark.through_pooler


async def create(
    client: httpx.AsyncClient, user: str = "alice", **fields: object
) -> dict[str, object]:
    response = await client.post(f"/api/{user}/tasks", json={"title": "Buy milk", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def parse_time(value: object) -> datetime:
    assert isinstance(value, str) and value.endswith("Z"), value  # RFC 3339, UTC
    return datetime.fromisoformat(value)


async def test_create_returns_the_task_with_location_and_stores_it(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await client.post(
        "/api/alice/tasks", json={"title": "  Buy milk  ", "description": "2 litres"}
    )

    assert response.status_code == 201
    task = response.json()
    assert set(task) == {
        "id", "user_id", "list_id", "title", "description", "completed", "completed_at",
        "priority", "due", "label_ids", "labels", "position", "created_at", "updated_at",
        "version", "change_seq",
    }  # fmt: skip
    assert task["completed_at"] is None
    assert task["title"] == "Buy milk"  # surrounding whitespace trimmed
    assert task["description"] == "2 litres"
    assert task["completed"] is False
    assert task["user_id"] == "alice"
    assert uuid.UUID(task["id"]).version == 4
    assert parse_time(task["created_at"]) == parse_time(task["updated_at"])
    assert abs((datetime.now(UTC) - parse_time(task["created_at"])).total_seconds()) < 60
    assert response.headers["location"] == f"/api/alice/tasks/{task['id']}"

    row = await stored_task(engine, task["id"])
    assert row is not None
    assert (row["user_id"], row["title"], row["description"], bool(row["completed"])) == (
        "alice", "Buy milk", "2 litres", False,
    )  # fmt: skip
    assert await count_rows(engine, "users") == 1


async def test_create_with_completed_true(client: httpx.AsyncClient) -> None:
    task = await create(client, completed=True)
    assert task["completed"] is True
    assert task["description"] is None


async def test_first_write_provisions_the_user_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    for _ in range(3):
        await create(client, user="bob")
    assert await count_rows(engine, "users") == 1
    assert await count_rows(engine, "tasks") == 3


async def test_location_header_resolves_to_the_task(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/alice/tasks", json={"title": "x"})
    fetched = await client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == response.json()


async def test_user_ids_with_url_special_characters_round_trip(client: httpx.AsyncClient) -> None:
    user = "auth0|5f7c8ec7c33c6c004bbafe82"
    response = await client.post("/api/auth0%7C5f7c8ec7c33c6c004bbafe82/tasks", json={"title": "x"})
    assert response.status_code == 201
    assert response.json()["user_id"] == user
    assert (await client.get(response.headers["location"])).json()["user_id"] == user


async def test_get_returns_the_task(client: httpx.AsyncClient) -> None:
    task = await create(client)
    response = await client.get(f"/api/alice/tasks/{task['id']}")
    assert response.status_code == 200
    assert response.json() == task


async def test_get_unknown_task_is_404_problem(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    body = assert_problem(await client.get(f"/api/alice/tasks/{missing}"), 404)
    assert str(missing) in body["detail"]


async def test_list_of_unknown_user_is_empty_not_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nobody-yet/tasks")
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


async def test_list_is_newest_first(client: httpx.AsyncClient) -> None:
    ids = [(await create(client, title=f"task {i}"))["id"] for i in range(5)]
    response = await client.get("/api/alice/tasks")
    assert response.status_code == 200
    assert [task["id"] for task in response.json()["items"]] == ids[::-1]
    assert response.json()["next_cursor"] is None


async def test_put_replaces_every_field_and_resets_omitted_ones(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    task = await create(client, description="old", completed=True)

    response = await client.put(f"/api/alice/tasks/{task['id']}", json={"title": "New title"})

    assert response.status_code == 200
    replaced = response.json()
    assert replaced["title"] == "New title"
    assert replaced["description"] is None  # omitted: back to its default
    assert replaced["completed"] is False
    assert replaced["created_at"] == task["created_at"]
    assert parse_time(replaced["updated_at"]) > parse_time(task["updated_at"])
    row = await stored_task(engine, str(task["id"]))
    assert row is not None
    assert (row["title"], row["description"], bool(row["completed"])) == ("New title", None, False)


async def test_put_unknown_task_is_404_and_creates_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await create(client)
    response = await client.put(f"/api/alice/tasks/{uuid.uuid4()}", json={"title": "x"})
    assert_problem(response, 404)
    assert await count_rows(engine) == 1


async def test_patch_changes_only_the_fields_present(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    task = await create(client, description="keep me")

    response = await client.patch(f"/api/alice/tasks/{task['id']}", json={"completed": True})

    assert response.status_code == 200
    patched = response.json()
    assert patched["completed"] is True
    assert (patched["title"], patched["description"]) == ("Buy milk", "keep me")
    assert patched["created_at"] == task["created_at"]
    assert parse_time(patched["updated_at"]) > parse_time(task["updated_at"])
    row = await stored_task(engine, str(task["id"]))
    assert row is not None and bool(row["completed"]) is True and row["description"] == "keep me"


async def test_patch_description_null_clears_it(client: httpx.AsyncClient) -> None:
    task = await create(client, description="to be cleared")
    response = await client.patch(f"/api/alice/tasks/{task['id']}", json={"description": None})
    assert response.status_code == 200
    assert response.json()["description"] is None
    assert response.json()["title"] == "Buy milk"


async def test_patch_title_is_trimmed(client: httpx.AsyncClient) -> None:
    task = await create(client)
    response = await client.patch(f"/api/alice/tasks/{task['id']}", json={"title": "  Eggs "})
    assert response.json()["title"] == "Eggs"


async def test_empty_patch_changes_nothing(client: httpx.AsyncClient) -> None:
    task = await create(client)
    response = await client.patch(f"/api/alice/tasks/{task['id']}", json={})
    assert response.status_code == 200
    assert response.json() == task  # not a modification: updated_at stays


async def test_patch_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.patch(f"/api/alice/tasks/{uuid.uuid4()}", json={}), 404)


async def test_delete_removes_the_task(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    task = await create(client)
    keep = await create(client, title="keep")

    response = await client.delete(f"/api/alice/tasks/{task['id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert await stored_task(engine, str(task["id"])) is None
    assert await stored_task(engine, str(keep["id"])) is not None
    assert_problem(await client.get(f"/api/alice/tasks/{task['id']}"), 404)
    assert_problem(await client.delete(f"/api/alice/tasks/{task['id']}"), 404)


async def test_complete_without_body_toggles(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    task = await create(client)
    url = f"/api/alice/tasks/{task['id']}/complete"

    first = await client.patch(url)
    assert first.status_code == 200
    assert first.json()["completed"] is True
    assert parse_time(first.json()["updated_at"]) > parse_time(task["updated_at"])
    second = await client.patch(url)
    assert second.json()["completed"] is False

    row = await stored_task(engine, str(task["id"]))
    assert row is not None and bool(row["completed"]) is False


async def test_complete_with_body_sets_the_value_so_retries_are_safe(
    client: httpx.AsyncClient,
) -> None:
    task = await create(client)
    url = f"/api/alice/tasks/{task['id']}/complete"
    for _ in range(3):
        response = await client.patch(url, json={"completed": True})
        assert response.status_code == 200
        assert response.json()["completed"] is True
    response = await client.patch(url, json={"completed": False})
    assert response.json()["completed"] is False


async def test_complete_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.patch(f"/api/alice/tasks/{uuid.uuid4()}/complete"), 404)


async def test_complete_rejects_a_non_boolean(client: httpx.AsyncClient) -> None:
    task = await create(client)
    response = await client.patch(
        f"/api/alice/tasks/{task['id']}/complete", json={"completed": "yes"}
    )
    body = assert_problem(response, 422)
    assert [error["field"] for error in body["errors"]] == ["completed"]
