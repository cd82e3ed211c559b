"""Filters, search, sorting with keyset cursors, stats, bulk delete, ETags, idempotent creates."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from support import assert_problem, count_rows, running, stored_task
from todo_api.settings import Settings
from todo_api.tasks.sorting import ALLOWED_SORTS

pytestmark = pytest.mark.through_pooler

TASKS = "/api/alice/tasks"


async def make(client: httpx.AsyncClient, title: str, **fields: object) -> dict[str, object]:
    response = await client.post(TASKS, json={"title": title, **fields})
    assert response.status_code == 201, response.text
    task: dict[str, object] = response.json()
    return task


async def listing(client: httpx.AsyncClient, **params: Any) -> dict[str, object]:
    response = await client.get(TASKS, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def titles(page: dict[str, object]) -> list[str]:
    items = page["items"]
    assert isinstance(items, list)
    return [str(item["title"]) for item in items]


async def walk(client: httpx.AsyncClient, limit: int, **params: Any) -> list[str]:
    """Titles over every page."""
    seen: list[str] = []
    cursor = None
    while True:
        page = await listing(
            client, limit=limit, **params, **({"cursor": cursor} if cursor else {})
        )
        seen += titles(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


# --- filters and search ---------------------------------------------------------------------------


async def test_completed_filter(client: httpx.AsyncClient) -> None:
    await make(client, "done", completed=True)
    await make(client, "open")
    assert titles(await listing(client, completed="true")) == ["done"]
    assert titles(await listing(client, completed="false")) == ["open"]


async def test_search_is_case_insensitive_over_title_and_description(
    client: httpx.AsyncClient,
) -> None:
    await make(client, "Buy MILK")
    await make(client, "Call mom", description="about the milkman")
    await make(client, "Unrelated")
    assert sorted(titles(await listing(client, q="milk"))) == ["Buy MILK", "Call mom"]
    assert titles(await listing(client, q="MOM")) == ["Call mom"]


@pytest.mark.parametrize("pattern", ["%", "_", "\\"])
async def test_search_treats_wildcards_literally(client: httpx.AsyncClient, pattern: str) -> None:
    await make(client, f"100{pattern} done")
    await make(client, "plain")
    assert titles(await listing(client, q=pattern)) == [f"100{pattern} done"]


async def test_search_rejects_nul(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(TASKS, params={"q": "a\x00b"}), 422)


async def test_updated_since_returns_tasks_changed_at_or_after(client: httpx.AsyncClient) -> None:
    old = await make(client, "old")
    await asyncio.sleep(0.01)
    since = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await make(client, "new")
    await client.patch(f"{TASKS}/{old['id']}", json={"description": "touched"})

    assert sorted(titles(await listing(client, updated_since=since.isoformat()))) == ["new", "old"]
    later = (since + timedelta(hours=1)).isoformat()
    assert titles(await listing(client, updated_since=later)) == []


async def test_updated_since_needs_a_time_zone(client: httpx.AsyncClient) -> None:
    body = assert_problem(
        await client.get(TASKS, params={"updated_since": "2026-01-01T00:00:00"}), 422
    )
    assert body["errors"][0]["field"] == "updated_since"


async def test_include_total_counts_every_match_not_just_the_page(
    client: httpx.AsyncClient,
) -> None:
    for i in range(5):
        await make(client, f"t{i}", completed=i % 2 == 0)
    page = await listing(client, limit=2, completed="true", include_total="true")
    assert page["total"] == 3 and len(titles(page)) == 2
    assert "total" not in await listing(client, limit=2)


# --- sorting and keyset cursors -------------------------------------------------------------------


@pytest.mark.parametrize("sort", ALLOWED_SORTS)
async def test_every_sort_pages_through_every_task_once_in_order(
    client: httpx.AsyncClient, sort: str
) -> None:
    # Duplicate titles force the id tie-breaker to do its job.
    for title in ["b", "a", "c", "a", "b", "d", "a"]:
        await make(client, title)
    await client.get(TASKS)  # no-op read
    # Manual order is within one list (the inbox, where these tasks are).
    scope = {"list_id": "inbox"} if sort.lstrip("-") == "position" else {}
    everything = await walk(client, limit=100, sort=sort, **scope)
    paged = await walk(client, limit=2, sort=sort, **scope)
    assert paged == everything
    assert len(paged) == 7
    if sort.lstrip("-") == "title":
        assert paged == sorted(paged, reverse=sort.startswith("-"))


async def test_default_sort_is_newest_first(client: httpx.AsyncClient) -> None:
    for title in ["first", "second", "third"]:
        await make(client, title)
    assert titles(await listing(client)) == ["third", "second", "first"]
    assert titles(await listing(client, sort="created_at")) == ["first", "second", "third"]


async def test_updated_at_sort_follows_changes(client: httpx.AsyncClient) -> None:
    first = await make(client, "first")
    await make(client, "second")
    await client.patch(f"{TASKS}/{first['id']}/complete")
    assert titles(await listing(client, sort="-updated_at")) == ["first", "second"]


async def test_unknown_sort_is_400_naming_the_allowed_values(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get(TASKS, params={"sort": "importance"}), 400)
    for allowed in ALLOWED_SORTS:
        assert allowed in body["detail"]


async def first_cursor(client: httpx.AsyncClient, **params: Any) -> str:
    for i in range(3):
        await make(client, f"t{i}", completed=True)
    cursor = (await listing(client, limit=1, **params))["next_cursor"]
    assert isinstance(cursor, str)
    return cursor


async def test_a_cursor_from_another_sort_is_refused(client: httpx.AsyncClient) -> None:
    cursor = await first_cursor(client, sort="title")
    body = assert_problem(await client.get(TASKS, params={"cursor": cursor, "sort": "-title"}), 400)
    assert "sort" in body["detail"]


@pytest.mark.parametrize(
    "other", [{"completed": "false"}, {"q": "t"}, {"updated_since": "2020-01-01T00:00:00Z"}]
)
async def test_a_cursor_from_other_filters_is_refused(
    client: httpx.AsyncClient, other: dict[str, str]
) -> None:
    cursor = await first_cursor(client, completed="true")
    assert_problem(await client.get(TASKS, params={"cursor": cursor, **other}), 400)


async def test_an_edited_cursor_is_refused(client: httpx.AsyncClient) -> None:
    cursor = await first_cursor(client)
    payload, mac = cursor.split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[-3] ^= 1  # one bit of the task id
    edited = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=") + "." + mac
    body = assert_problem(await client.get(TASKS, params={"cursor": edited}), 400)
    assert "altered" in body["detail"]


async def test_a_cursor_signed_with_another_secret_is_refused(settings: Settings) -> None:
    async with running(settings) as client:
        cursor = await first_cursor(client)
    other = settings.model_copy(
        update={"cursor_secret": settings.cursor_secret.__class__("x" * 32)}
    )
    async with running(other) as client:
        assert_problem(await client.get(TASKS, params={"cursor": cursor}), 400)


# --- stats and bulk delete ------------------------------------------------------------------------


async def test_stats_counts_total_completed_pending(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await make(client, f"t{i}", completed=i < 2)
    await client.post("/api/bob/tasks", json={"title": "not alice's", "completed": True})
    response = await client.get(f"{TASKS}/stats")
    assert response.status_code == 200  # not shadowed by /{task_id}
    assert response.json() == {
        "total": 5, "completed": 2, "pending": 3, "overdue": 0, "due_today": 0,
    }  # fmt: skip
    assert (await client.get("/api/nobody/tasks/stats")).json() == {
        "total": 0, "completed": 0, "pending": 0, "overdue": 0, "due_today": 0,
    }  # fmt: skip


async def test_bulk_delete_removes_only_completed_tasks_of_that_user(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    for i in range(4):
        await make(client, f"t{i}", completed=i % 2 == 0)
    bob = (await client.post("/api/bob/tasks", json={"title": "b", "completed": True})).json()

    response = await client.delete(TASKS, params={"completed": "true"})

    assert response.status_code == 200
    assert response.json() == {"deleted": 2}
    assert titles(await listing(client)) == ["t3", "t1"]
    assert await stored_task(engine, bob["id"]) is not None


async def test_bulk_delete_without_a_filter_is_refused_and_deletes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await make(client, "keep me", completed=True)
    body = assert_problem(await client.delete(TASKS), 400)
    assert "completed=true" in body["detail"]
    assert await count_rows(engine) == 1


# --- ETags and conditional requests ---------------------------------------------------------------


async def test_every_single_task_response_carries_its_version_as_etag(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(TASKS, json={"title": "x"})
    task_id = created.json()["id"]
    assert created.headers["etag"] == '"1"' and created.json()["version"] == 1
    patched = await client.patch(f"{TASKS}/{task_id}", json={"title": "y"})
    assert patched.headers["etag"] == '"2"' and patched.json()["version"] == 2
    toggled = await client.patch(f"{TASKS}/{task_id}/complete")
    assert toggled.headers["etag"] == '"3"'
    replaced = await client.put(f"{TASKS}/{task_id}", json={"title": "z"})
    assert replaced.headers["etag"] == '"4"'
    assert (await client.get(f"{TASKS}/{task_id}")).headers["etag"] == '"4"'


async def test_if_none_match_gives_304_without_a_body(client: httpx.AsyncClient) -> None:
    task = await make(client, "x")
    url = f"{TASKS}/{task['id']}"
    for header in ['"1"', 'W/"1"', '"7", "1"', "*"]:
        response = await client.get(url, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == '"1"'
    assert (await client.get(url, headers={"If-None-Match": '"2"'})).status_code == 200


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PUT", "", {"title": "new"}),
        ("PATCH", "", {"title": "new"}),
        ("PATCH", "/complete", None),
        ("DELETE", "", None),
    ],
)
async def test_if_match_with_a_stale_etag_is_412_and_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str, body: object
) -> None:
    task = await make(client, "original")
    url = f"{TASKS}/{task['id']}"
    await client.patch(url, json={"description": "someone else's edit"})  # now version 2
    before = await stored_task(engine, str(task["id"]))

    for stale in ['"1"', 'W/"2"', '"99999999999999999999"']:  # weak tags never match If-Match
        response = await client.request(
            method, url + suffix, json=body, headers={"If-Match": stale}
        )
        problem = assert_problem(response, 412)
        assert response.headers["etag"] == '"2"'
        assert '"2"' in problem["detail"]
    assert await stored_task(engine, str(task["id"])) == before

    response = await client.request(method, url + suffix, json=body, headers={"If-Match": '"2"'})
    assert response.status_code == (204 if method == "DELETE" else 200)


async def test_if_match_star_and_lists(client: httpx.AsyncClient) -> None:
    task = await make(client, "x")
    url = f"{TASKS}/{task['id']}"
    assert (await client.patch(url, json={}, headers={"If-Match": "*"})).status_code == 200
    ok = await client.patch(url, json={"title": "y"}, headers={"If-Match": '"5", "1"'})
    assert ok.status_code == 200
    assert_problem(await client.patch(url, json={}, headers={"If-Match": '"1"'}), 412)


async def test_if_match_on_a_missing_task_is_404(client: httpx.AsyncClient) -> None:
    url = f"{TASKS}/{uuid.uuid4()}"
    assert_problem(await client.patch(url, json={"title": "x"}, headers={"If-Match": '"1"'}), 404)


async def test_malformed_if_match_is_400(client: httpx.AsyncClient) -> None:
    task = await make(client, "x")
    response = await client.patch(f"{TASKS}/{task['id']}", json={}, headers={"If-Match": "1"})
    assert_problem(response, 400)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_concurrent_patches_with_the_same_if_match_let_exactly_one_win(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    task = await make(client, "contended")
    url = f"{TASKS}/{task['id']}"

    responses = await asyncio.gather(
        *(client.patch(url, json={"title": f"writer {i}"}, headers={"If-Match": '"1"'})
          for i in range(20))
    )  # fmt: skip

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [412] * 19
    winner = next(response.json() for response in responses if response.status_code == 200)
    row = await stored_task(engine, str(task["id"]))
    assert row is not None
    assert (row["title"], row["version"]) == (winner["title"], 2)  # no lost update


# --- idempotent creates ---------------------------------------------------------------------------


async def test_a_retried_create_with_the_same_key_returns_the_first_response(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "create-1"}
    first = await client.post(TASKS, json={"title": "once"}, headers=headers)
    await client.patch(f"{TASKS}/{first.json()['id']}/complete")  # later change
    retry = await client.post(TASKS, json={"title": "once"}, headers=headers)

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()  # the original response, not the current task
    assert retry.headers["location"] == first.headers["location"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert await count_rows(engine) == 1


async def test_the_same_key_with_another_body_is_422(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "create-2"}
    assert (await client.post(TASKS, json={"title": "a"}, headers=headers)).status_code == 201
    body = assert_problem(await client.post(TASKS, json={"title": "b"}, headers=headers), 422)
    assert "Idempotency-Key" in body["detail"]
    assert await count_rows(engine) == 1


async def test_keys_are_scoped_per_user(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    headers = {"Idempotency-Key": "shared"}
    a = await client.post(TASKS, json={"title": "x"}, headers=headers)
    b = await client.post("/api/bob/tasks", json={"title": "x"}, headers=headers)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    assert await count_rows(engine) == 2


async def test_concurrent_creates_with_one_key_create_one_task(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "burst"}
    responses = await asyncio.gather(
        *(client.post(TASKS, json={"title": "burst"}, headers=headers) for _ in range(10))
    )
    assert {response.status_code for response in responses} == {201}
    assert len({response.json()["id"] for response in responses}) == 1
    assert await count_rows(engine) == 1


async def test_an_expired_key_creates_anew_and_is_cleaned_up(
    settings: Settings, engine: AsyncEngine
) -> None:
    short = settings.model_copy(update={"idempotency_ttl_hours": 0.5 / 3600})  # half a second
    async with running(short) as client:
        headers = {"Idempotency-Key": "old"}
        first = await client.post(TASKS, json={"title": "x"}, headers=headers)
        await asyncio.sleep(0.6)
        second = await client.post(TASKS, json={"title": "x"}, headers=headers)
    assert first.json()["id"] != second.json()["id"]
    assert "idempotent-replayed" not in second.headers
    assert await count_rows(engine, "idempotency_keys") == 1  # the expired row was replaced


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there"])
async def test_a_malformed_key_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, key: str
) -> None:
    response = await client.post(TASKS, json={"title": "x"}, headers={"Idempotency-Key": key})
    assert_problem(response, 422)
    assert await count_rows(engine) == 0
