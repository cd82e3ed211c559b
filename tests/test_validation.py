"""Field-by-field validation: every rejection is a 422 problem naming the field, and stores nothing.

Body rules are checked on each write that accepts them (POST create, PUT replace, PATCH update);
each rejection also checks that the database holds exactly what it held before the request.
Rejections are made before any SQL runs (`request_layer`): SQLite only, in CI's budget; what is
accepted and stored runs on both.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from support import assert_problem, create_task, snapshot, stored_task

USER = "alice"
TASKS = f"/api/{USER}/tasks"
WRITES = ("POST", "PUT", "PATCH")
READ_ONLY = ("id", "user_id", "created_at", "updated_at")


async def write_target(client: httpx.AsyncClient, method: str) -> tuple[str, str]:
    """The URL a write with `method` goes to, and the id of a task that must stay unchanged."""
    task = await create_task(client, description="2 litres")
    url = TASKS if method == "POST" else f"{TASKS}/{task['id']}"
    return url, task["id"]


def named_fields(problem: dict[str, Any]) -> set[str]:
    errors = problem.get("errors")
    assert isinstance(errors, list) and errors, problem
    return {error["field"] for error in errors}


async def assert_write_rejected(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    method: str,
    body: Any,
    *,
    fields: set[str] | None,
    status: int = 422,
) -> dict[str, Any]:
    """Send `body` with `method`; expect a problem naming exactly `fields`, and no change."""
    url, task_id = await write_target(client, method)
    before = await snapshot(engine, task_id)

    response = await client.request(method, url, json=body)

    problem = assert_problem(response, status)
    if fields is not None:
        assert named_fields(problem) == fields, problem
        assert all(error["location"] == "body" for error in problem["errors"]), problem
    assert await snapshot(engine, task_id) == before
    return problem


async def accepted_write(
    client: httpx.AsyncClient, method: str, body: dict[str, Any]
) -> dict[str, Any]:
    url, _ = await write_target(client, method)
    response = await client.request(method, url, json=body)
    assert response.status_code == (201 if method == "POST" else 200), response.text
    task: dict[str, Any] = response.json()
    return task


# --- title ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", WRITES)
async def test_title_of_255_characters_after_trimming_is_accepted(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    title = "a" * 255
    task = await accepted_write(client, method, {"title": f"  {title}  "})
    assert task["title"] == title
    row = await stored_task(engine, task["id"])
    assert row is not None and row["title"] == title


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("title", ["a" * 256, f"  {'a' * 256}  "], ids=["bare", "padded"])
async def test_title_longer_than_255_characters_after_trimming_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, title: str
) -> None:
    await assert_write_rejected(client, engine, method, {"title": title}, fields={"title"})


@pytest.mark.parametrize("method", WRITES)
async def test_title_length_counts_characters_not_bytes(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    title = "\N{GRINNING FACE}" * 255  # 1020 bytes of UTF-8
    task = await accepted_write(client, method, {"title": title})
    row = await stored_task(engine, task["id"])
    assert row is not None and row["title"] == title
    await assert_write_rejected(client, engine, method, {"title": title + "x"}, fields={"title"})


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("title", ["", " ", "   \t  ", "\n"], ids=["empty", "space", "tabs", "nl"])
async def test_blank_title_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, title: str
) -> None:
    await assert_write_rejected(client, engine, method, {"title": title}, fields={"title"})


@pytest.mark.parametrize("method", WRITES)
async def test_title_is_trimmed_before_it_is_stored(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    task = await accepted_write(client, method, {"title": "   Buy  milk   "})
    assert task["title"] == "Buy  milk"  # inner whitespace is kept
    row = await stored_task(engine, task["id"])
    assert row is not None and row["title"] == "Buy  milk"


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize(
    "title", ["first\nsecond", "first\r\nsecond", "tab\there", "bell\x07", "del\x7f", "\x1b[31mred"]
)
async def test_title_must_be_a_single_line_without_control_characters(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, title: str
) -> None:
    await assert_write_rejected(client, engine, method, {"title": title}, fields={"title"})


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("title", [42, 1.5, True, ["Buy milk"], {"text": "Buy milk"}])
async def test_title_that_is_not_a_string_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, title: Any
) -> None:
    await assert_write_rejected(client, engine, method, {"title": title}, fields={"title"})


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
async def test_null_title_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    # A required field on POST/PUT; on PATCH null would mean "no title", which cannot be stored.
    await assert_write_rejected(client, engine, method, {"title": None}, fields={"title"})


@pytest.mark.request_layer
@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_missing_title_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    await assert_write_rejected(client, engine, method, {"description": "x"}, fields={"title"})


# --- description ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", WRITES)
async def test_description_of_10000_characters_is_accepted(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    description = "d" * 10_000
    task = await accepted_write(client, method, {"title": "x", "description": description})
    assert task["description"] == description
    row = await stored_task(engine, task["id"])
    assert row is not None and row["description"] == description


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
async def test_description_of_10001_characters_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    body = {"title": "x", "description": "d" * 10_001}
    await assert_write_rejected(client, engine, method, body, fields={"description"})


@pytest.mark.parametrize("method", WRITES)
async def test_description_may_span_several_lines(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    description = "line one\nline two\r\n\tindented"
    task = await accepted_write(client, method, {"title": "x", "description": description})
    row = await stored_task(engine, task["id"])
    assert row is not None and row["description"] == description


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("description", [7, False, ["a"], {"a": "b"}])
async def test_description_that_is_not_a_string_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, description: Any
) -> None:
    body = {"title": "x", "description": description}
    await assert_write_rejected(client, engine, method, body, fields={"description"})


async def test_patch_description_null_clears_it(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    task = await create_task(client, description="2 litres")

    response = await client.patch(f"{TASKS}/{task['id']}", json={"description": None})

    assert response.status_code == 200, response.text
    assert response.json()["description"] is None
    row = await stored_task(engine, task["id"])
    assert row is not None
    assert row["description"] is None
    assert row["title"] == "Buy milk"  # only the field present changed


# --- completed --------------------------------------------------------------------------------


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("completed", ["true", "false", 1, 0, 1.0, "", [True], {"v": True}])
async def test_completed_must_be_a_json_boolean(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, completed: Any
) -> None:
    body = {"title": "x", "completed": completed}
    await assert_write_rejected(client, engine, method, body, fields={"completed"})


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
async def test_null_completed_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    body = {"title": "x", "completed": None}
    await assert_write_rejected(client, engine, method, body, fields={"completed"})


@pytest.mark.request_layer
@pytest.mark.parametrize("completed", ["true", 1, None])
async def test_complete_endpoint_body_must_hold_a_json_boolean(
    client: httpx.AsyncClient, engine: AsyncEngine, completed: Any
) -> None:
    task = await create_task(client)
    before = await snapshot(engine, task["id"])

    response = await client.patch(f"{TASKS}/{task['id']}/complete", json={"completed": completed})

    problem = assert_problem(response, 422)
    assert named_fields(problem) == {"completed"}
    assert await snapshot(engine, task["id"]) == before


# --- body shape, unknown and read-only fields -------------------------------------------------


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("body", [[], [{"title": "x"}], "Buy milk", 42, True], ids=repr)
async def test_body_that_is_not_an_object_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, body: Any
) -> None:
    problem = await assert_write_rejected(client, engine, method, body, fields=None)
    assert all(error["location"] == "body" for error in problem["errors"]), problem


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("field", ["importance", "Title", "titel", "done"])
async def test_unknown_field_is_rejected_and_named(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, field: str
) -> None:
    body = {"title": "x", field: "value"}
    problem = await assert_write_rejected(client, engine, method, body, fields={field})
    assert problem["errors"][0]["type"] == "extra_forbidden"


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("field", READ_ONLY)
async def test_read_only_field_is_rejected_and_named(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, field: str
) -> None:
    values = {
        "id": str(uuid.uuid4()),
        "user_id": "mallory",
        "created_at": "2000-01-01T00:00:00Z",
        "updated_at": "2000-01-01T00:00:00Z",
    }
    body = {"title": "x", field: values[field]}
    problem = await assert_write_rejected(client, engine, method, body, fields={field})
    assert "read-only" in problem["errors"][0]["message"], problem


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
async def test_every_read_only_field_is_named_when_several_are_sent(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    body = {
        "title": "x",
        "id": str(uuid.uuid4()),
        "user_id": "mallory",
        "created_at": "2000-01-01T00:00:00Z",
        "updated_at": "2000-01-01T00:00:00Z",
        "colour": "red",
    }
    await assert_write_rejected(client, engine, method, body, fields={*READ_ONLY, "colour"})


@pytest.mark.request_layer
@pytest.mark.parametrize("method", WRITES)
async def test_every_invalid_field_is_reported_at_once(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str
) -> None:
    body = {"title": "a" * 256, "description": 5, "completed": "yes"}
    fields = {"title", "description", "completed"}
    await assert_write_rejected(client, engine, method, body, fields=fields)


# --- query and path parameters ----------------------------------------------------------------


@pytest.mark.request_layer
@pytest.mark.parametrize("limit", ["0", "201", "-1", "ten", "1.5", "99999999999999999999999"])
async def test_limit_outside_1_to_200_or_not_an_integer_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, limit: str
) -> None:
    await create_task(client)
    before = await snapshot(engine)

    response = await client.get(TASKS, params={"limit": limit})

    problem = assert_problem(response, 422)
    assert named_fields(problem) == {"limit"}
    assert problem["errors"][0]["location"] == "query"
    assert await snapshot(engine) == before


@pytest.mark.parametrize("limit", [1, 200])
async def test_limit_bounds_are_inclusive(client: httpx.AsyncClient, limit: int) -> None:
    await create_task(client)
    response = await client.get(TASKS, params={"limit": limit})
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 1


@pytest.mark.request_layer
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PUT", "", {"title": "x"}),
        ("PATCH", "", {"title": "x"}),
        ("DELETE", "", None),
        ("PATCH", "/complete", None),
        ("PATCH", "/complete", {"completed": True}),
    ],
    ids=["get", "put", "patch", "delete", "toggle", "complete"],
)
@pytest.mark.parametrize(
    "task_id",
    [
        "not-a-uuid",
        "123",
        "0b6a2f4e-8a1b-4c1d-9e2f-3a4b5c6d7e8",  # one digit short
        "0b6a2f4e-8a1b-4c1d-9e2f-3a4b5c6d7e8g",  # not hex
        "0b6a2f4e-8a1b-4c1d-9e2f-3a4b5c6d7e8f0",  # one digit long
    ],
)
async def test_malformed_task_id_is_rejected(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
    task_id: str,
) -> None:
    task = await create_task(client)
    before = await snapshot(engine, task["id"])

    response = await client.request(method, f"{TASKS}/{task_id}{suffix}", json=body)

    problem = assert_problem(response, 422)
    assert named_fields(problem) == {"task_id"}
    assert problem["errors"][0]["location"] == "path"
    assert await snapshot(engine, task["id"]) == before


async def test_user_id_of_128_characters_is_accepted(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    user = "u" * 128

    response = await client.post(f"/api/{user}/tasks", json={"title": "x"})

    assert response.status_code == 201, response.text
    assert response.json()["user_id"] == user
    row = await stored_task(engine, response.json()["id"])
    assert row is not None and row["user_id"] == user
    listed = await client.get(f"/api/{user}/tasks")
    assert [item["id"] for item in listed.json()["items"]] == [response.json()["id"]]


INVALID_USER_IDS = [
    pytest.param("u" * 129, id="129-chars"),
    pytest.param("u" * 1000, id="1000-chars"),
    pytest.param("alice%20smith", id="space"),
    pytest.param("%20alice", id="leading-space"),
    pytest.param("%20", id="only-space"),
    pytest.param("alice%09", id="tab"),
    pytest.param("ali%0Ace", id="newline"),
    pytest.param("ali%0Dce", id="carriage-return"),
    pytest.param("ali%00ce", id="nul"),
    pytest.param("ali%01ce", id="soh"),
    pytest.param("ali%1Fce", id="unit-separator"),
    pytest.param("ali%7Fce", id="del"),
    pytest.param("ali%C2%A0ce", id="no-break-space"),
    pytest.param("ali%E2%80%83ce", id="em-space"),
]


@pytest.mark.request_layer
@pytest.mark.parametrize("user", INVALID_USER_IDS)
async def test_invalid_user_id_is_rejected_on_create(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    before = await snapshot(engine)

    response = await client.post(f"/api/{user}/tasks", json={"title": "x"})

    problem = assert_problem(response, 422)
    assert named_fields(problem) == {"user_id"}
    assert problem["errors"][0]["location"] == "path"
    assert await snapshot(engine) == before


@pytest.mark.request_layer
@pytest.mark.parametrize(
    "user",
    [
        pytest.param("u" * 129, id="129-chars"),
        pytest.param("alice%20smith", id="space"),
        pytest.param("ali%00ce", id="nul"),
    ],
)
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("GET", "/{task}", None),
        ("PUT", "/{task}", {"title": "x"}),
        ("PATCH", "/{task}", {"title": "x"}),
        ("DELETE", "/{task}", None),
        ("PATCH", "/{task}/complete", None),
        ("PATCH", "/{task}/complete", {"completed": True}),
    ],
    ids=["list", "get", "put", "patch", "delete", "toggle", "complete"],
)
async def test_invalid_user_id_is_rejected_on_every_route(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    user: str,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    task = await create_task(client)
    before = await snapshot(engine, task["id"])

    url = f"/api/{user}/tasks{suffix.format(task=task['id'])}"
    response = await client.request(method, url, json=body)

    problem = assert_problem(response, 422)
    assert named_fields(problem) == {"user_id"}
    assert problem["errors"][0]["location"] == "path"
    assert await snapshot(engine, task["id"]) == before
