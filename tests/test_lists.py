"""Lists through HTTP: the inbox, create/get/patch with ETags, names and colours, the `inbox`
alias, deleting a list (with its tasks, or moving them), ownership, counts, the quota, and
the manual order of lists."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from support import assert_problem, count_rows, create_task, running, stored_task
from todo_api.settings import Settings
from todo_api.tables.lists import inbox_id

pytestmark = pytest.mark.through_pooler

LISTS = "/api/alice/lists"
TASKS = "/api/alice/tasks"


async def create_list(
    client: httpx.AsyncClient, name: str = "Groceries", user: str = "alice", **fields: Any
) -> dict[str, Any]:
    response = await client.post(f"/api/{user}/lists", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def all_lists(client: httpx.AsyncClient, user: str = "alice") -> list[dict[str, Any]]:
    response = await client.get(f"/api/{user}/lists")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def get_list(client: httpx.AsyncClient, list_id: str, user: str = "alice") -> dict[str, Any]:
    response = await client.get(f"/api/{user}/lists/{list_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def in_order(client: httpx.AsyncClient, list_id: str, user: str = "alice") -> list[str]:
    """The ids of a list's tasks in manual order (one page is enough here)."""
    response = await client.get(
        f"/api/{user}/tasks", params={"list_id": list_id, "sort": "position", "limit": 200}
    )
    assert response.status_code == 200, response.text
    return [task["id"] for task in response.json()["items"]]


async def used(client: httpx.AsyncClient, user: str = "alice") -> dict[str, Any]:
    response = await client.get(f"/api/{user}/limits")
    assert response.status_code == 200, response.text
    return {name: limit["used"] for name, limit in response.json().items()}


def db_id(engine: AsyncEngine, value: str | uuid.UUID) -> Any:
    parsed = uuid.UUID(str(value))
    return parsed.hex if engine.dialect.name == "sqlite" else parsed


async def stored_lists(engine: AsyncEngine, user: str = "alice") -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            sa.text("SELECT * FROM lists WHERE user_id = :u ORDER BY position"), {"u": user}
        )
        return [dict(row._mapping) for row in rows]


async def tasks_in_list(engine: AsyncEngine, list_id: str | uuid.UUID) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            sa.text("SELECT count(*) FROM tasks WHERE list_id = :l"),
            {"l": db_id(engine, list_id)},
        )
        return int(count or 0)


# --- the inbox ----------------------------------------------------------------------------------


async def test_a_new_user_sees_just_an_empty_inbox(client: httpx.AsyncClient) -> None:
    [inbox] = await all_lists(client, user="newcomer")

    assert inbox["id"] == str(inbox_id("newcomer"))
    assert inbox["is_inbox"] is True
    assert inbox["name"] == "Inbox"
    assert inbox["color"] is None
    assert (inbox["task_count"], inbox["open_task_count"]) == (0, 0)
    assert inbox["version"] == 1


async def test_the_inbox_alias_names_the_inbox_in_the_path(client: httpx.AsyncClient) -> None:
    by_alias = await client.get(f"{LISTS}/inbox")
    assert by_alias.status_code == 200, by_alias.text
    by_id = await get_list(client, str(inbox_id("alice")))

    assert by_alias.json() == by_id
    assert by_alias.headers["ETag"] == '"1"'


async def test_the_inbox_can_be_renamed(client: httpx.AsyncClient) -> None:
    response = await client.patch(f"{LISTS}/inbox", json={"name": "  Eingang  "})

    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Eingang"
    assert response.json()["is_inbox"] is True
    assert response.json()["version"] == 2
    assert (await get_list(client, "inbox"))["name"] == "Eingang"


async def test_the_inbox_cannot_be_deleted(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    task = await create_task(client, title="stays")

    assert_problem(await client.delete(f"{LISTS}/inbox"), 409)
    assert_problem(await client.delete(f"{LISTS}/{inbox_id('alice')}"), 409)

    assert [item["is_inbox"] for item in await all_lists(client)] == [True]
    assert await stored_task(engine, task["id"]) is not None


async def test_the_inbox_of_a_user_without_requests_yet_cannot_be_deleted(
    client: httpx.AsyncClient,
) -> None:
    assert_problem(await client.delete("/api/newcomer/lists/inbox"), 409)
    assert [item["is_inbox"] for item in await all_lists(client, user="newcomer")] == [True]


async def test_the_inbox_of_a_user_without_requests_yet_can_be_moved(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/api/newcomer/lists/inbox/move", json={})
    assert response.status_code == 200, response.text
    assert response.json()["is_inbox"] is True


async def test_a_task_created_with_list_id_inbox_is_in_the_inbox(
    client: httpx.AsyncClient,
) -> None:
    other = await create_list(client)
    in_inbox = await create_task(client, title="a", list_id="inbox")
    default = await create_task(client, title="b")
    elsewhere = await create_task(client, title="c", list_id=other["id"])

    assert in_inbox["list_id"] == default["list_id"] == str(inbox_id("alice"))
    page = await client.get(TASKS, params={"list_id": "inbox"})
    assert page.status_code == 200, page.text
    assert {task["id"] for task in page.json()["items"]} == {in_inbox["id"], default["id"]}
    mine = await client.get(TASKS, params={"list_id": other["id"]})
    assert [task["id"] for task in mine.json()["items"]] == [elsewhere["id"]]


# --- create, get, patch --------------------------------------------------------------------------


async def test_creating_a_list_answers_201_with_location_and_etag(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(LISTS, json={"name": "Groceries", "color": "#22C55E"})

    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["Location"] == f"{LISTS}/{body['id']}"
    assert response.headers["ETag"] == '"1"'
    assert body["name"] == "Groceries"
    assert body["color"] == "#22c55e"  # stored lower-case
    assert body["is_inbox"] is False
    assert (body["task_count"], body["open_task_count"], body["version"]) == (0, 0, 1)
    assert (await client.get(response.headers["Location"])).json() == body


async def test_new_lists_go_after_the_users_other_lists(client: httpx.AsyncClient) -> None:
    first = await create_list(client, "first")
    second = await create_list(client, "second")
    third = await create_list(client, "third")

    lists = await all_lists(client)

    assert [item["id"] for item in lists] == [
        str(inbox_id("alice")),
        first["id"],
        second["id"],
        third["id"],
    ]
    positions = [item["position"] for item in lists]
    assert positions == sorted(positions) and len(set(positions)) == 4


async def test_a_new_list_goes_last_even_after_a_list_was_moved_to_the_end(
    client: httpx.AsyncClient,
) -> None:
    first = await create_list(client, "first")
    second = await create_list(client, "second")
    moved = await client.post(f"{LISTS}/{first['id']}/move", json={"after_id": second["id"]})
    assert moved.status_code == 200, moved.text

    third = await create_list(client, "third")

    assert [item["name"] for item in await all_lists(client)] == [
        "Inbox",
        "second",
        "first",
        "third",
    ]
    assert third["position"] > moved.json()["position"]


async def test_a_matching_if_none_match_answers_304(client: httpx.AsyncClient) -> None:
    created = await create_list(client)

    response = await client.get(f"{LISTS}/{created['id']}", headers={"If-None-Match": '"1"'})
    assert response.status_code == 304
    assert response.headers["ETag"] == '"1"'
    assert response.content == b""
    changed = await client.get(f"{LISTS}/{created['id']}", headers={"If-None-Match": '"7"'})
    assert changed.status_code == 200


async def test_patching_with_a_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    created = await create_list(client, "before")
    path = f"{LISTS}/{created['id']}"

    ok = await client.patch(path, json={"name": "after"}, headers={"If-Match": '"1"'})
    assert ok.status_code == 200, ok.text
    assert ok.headers["ETag"] == '"2"'
    stale = await client.patch(path, json={"name": "lost"}, headers={"If-Match": '"1"'})

    assert_problem(stale, 412)
    current = await get_list(client, created["id"])
    assert (current["name"], current["version"]) == ("after", 2)


async def test_patch_changes_only_the_fields_present(client: httpx.AsyncClient) -> None:
    created = await create_list(client, "Work", color="#112233")
    path = f"{LISTS}/{created['id']}"

    renamed = await client.patch(path, json={"name": "Job"})
    assert renamed.json()["color"] == "#112233"
    cleared = await client.patch(path, json={"color": None})
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["name"], cleared.json()["color"]) == ("Job", None)
    assert cleared.json()["version"] == 3


async def test_list_names_are_trimmed_and_1_to_120_characters(client: httpx.AsyncClient) -> None:
    assert (await create_list(client, "  padded  "))["name"] == "padded"
    assert (await create_list(client, "x"))["name"] == "x"
    assert (await create_list(client, "y" * 120))["name"] == "y" * 120
    assert (await create_list(client, "  " + "z" * 120 + "  "))["name"] == "z" * 120
    created = await create_list(client, "valid")

    for bad in ("", "   ", "w" * 121, "two\nlines", "two\rlines", 7, None):
        assert_problem(await client.post(LISTS, json={"name": bad}), 422)
        assert_problem(await client.patch(f"{LISTS}/{created['id']}", json={"name": bad}), 422)
    assert_problem(await client.post(LISTS, json={}), 422)

    assert len(await all_lists(client)) == 6
    assert (await get_list(client, created["id"]))["version"] == 1


async def test_list_colors_are_rrggbb_or_null(client: httpx.AsyncClient) -> None:
    assert (await create_list(client, "a", color=None))["color"] is None
    assert (await create_list(client, "b", color="#A0b1C2"))["color"] == "#a0b1c2"
    created = await create_list(client, "c")

    for bad in ("red", "#abc", "a0b1c2", "#12345g", "#1234567", "", 0x123456):
        assert_problem(await client.post(LISTS, json={"name": "d", "color": bad}), 422)
        patched = await client.patch(f"{LISTS}/{created['id']}", json={"color": bad})
        assert_problem(patched, 422)

    assert len(await all_lists(client)) == 4


async def test_read_only_list_fields_are_refused(client: httpx.AsyncClient) -> None:
    created = await create_list(client)
    for field, value in (("is_inbox", True), ("position", "a"), ("task_count", 3), ("id", "x")):
        assert_problem(await client.post(LISTS, json={"name": "n", field: value}), 422)
        patched = await client.patch(f"{LISTS}/{created['id']}", json={field: value})
        assert_problem(patched, 422)
    assert len(await all_lists(client)) == 2


# --- counts -------------------------------------------------------------------------------------


async def test_a_list_counts_its_tasks_and_its_open_tasks(client: httpx.AsyncClient) -> None:
    work = await create_list(client, "Work")
    for done in (True, False, False):
        await create_task(client, title="w", list_id=work["id"], completed=done)
    await create_task(client, title="in inbox", completed=True)
    await create_task(client, user="bob", title="not alice's")

    counts = {
        item["name"]: (item["task_count"], item["open_task_count"])
        for item in await all_lists(client)
    }

    assert counts == {"Inbox": (1, 0), "Work": (3, 2)}
    one = await get_list(client, work["id"])
    assert (one["task_count"], one["open_task_count"]) == (3, 2)


# --- delete -------------------------------------------------------------------------------------


async def test_deleting_a_list_deletes_its_tasks_by_default(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    doomed = await create_list(client, "Doomed")
    kept = await create_task(client, title="kept")
    for index in range(3):
        await create_task(client, title=f"doomed {index}", list_id=doomed["id"])
    before = await used(client)
    assert (before["tasks"], before["lists"]) == (4, 2)

    response = await client.delete(f"{LISTS}/{doomed['id']}")

    assert response.status_code == 204, response.text
    assert_problem(await client.get(f"{LISTS}/{doomed['id']}"), 404)
    assert await tasks_in_list(engine, doomed["id"]) == 0
    assert await count_rows(engine, "tasks") == 1
    assert await stored_task(engine, kept["id"]) is not None
    after = await used(client)
    assert (after["tasks"], after["lists"]) == (1, 1)


async def test_tasks_delete_is_the_default(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    doomed = await create_list(client, "Doomed")
    await create_task(client, list_id=doomed["id"])

    response = await client.delete(f"{LISTS}/{doomed['id']}", params={"tasks": "delete"})

    assert response.status_code == 204, response.text
    assert await count_rows(engine, "tasks") == 0
    assert (await used(client))["tasks"] == 0


async def test_deleting_a_list_can_move_its_tasks_to_the_end_of_another_list_in_order(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    source = await create_list(client, "Source")
    target = await create_list(client, "Target")
    kept = [
        (await create_task(client, title=f"t{i}", list_id=target["id"]))["id"] for i in range(2)
    ]
    moving = [
        (await create_task(client, title=f"s{i}", list_id=source["id"]))["id"] for i in range(3)
    ]
    # A manual order that is not the creation order: s2, s0, s1.
    first = await client.post(f"{TASKS}/{moving[2]}/move", json={})
    assert first.status_code == 200, first.text
    order = [moving[2], moving[0], moving[1]]
    assert await in_order(client, source["id"]) == order

    response = await client.delete(
        f"{LISTS}/{source['id']}", params={"tasks": "move", "move_to": target["id"]}
    )

    assert response.status_code == 204, response.text
    assert await in_order(client, target["id"]) == kept + order
    for task_id in order:
        task = (await client.get(f"{TASKS}/{task_id}")).json()
        assert task["list_id"] == target["id"]
    assert await count_rows(engine, "tasks") == 5
    assert (await used(client))["tasks"] == 5
    assert [item["name"] for item in await all_lists(client)] == ["Inbox", "Target"]
    counts = await get_list(client, target["id"])
    assert (counts["task_count"], counts["open_task_count"]) == (5, 5)


async def test_moving_long_keyed_tasks_on_delete_keeps_keys_short_and_the_order(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    source = await create_list(client, "Source")
    waiting = await create_task(client, title="already in inbox")
    a, b, c = [
        (await create_task(client, title=f"s{i}", list_id=source["id"]))["id"] for i in range(3)
    ]
    # Long keys in the source: b and c take turns right after a.
    key = ""
    for index in range(200):
        response = await client.post(f"{TASKS}/{b if index % 2 else c}/move", json={"after_id": a})
        assert response.status_code == 200, response.text
        key = response.json()["position"]
        if len(key) > 40:
            break
    assert len(key) > 40
    order = await in_order(client, source["id"])

    response = await client.delete(
        f"{LISTS}/{source['id']}", params={"tasks": "move", "move_to": "inbox"}
    )

    assert response.status_code == 204, response.text
    assert await in_order(client, "inbox") == [waiting["id"], *order]
    async with engine.connect() as connection:
        longest = await connection.scalar(sa.text("SELECT max(length(position)) FROM tasks"))
    assert longest <= 48
    newest = await create_task(client, title="newest")
    assert await in_order(client, "inbox") == [waiting["id"], *order, newest["id"]]


async def test_deleting_a_list_can_move_its_tasks_to_the_inbox_alias(
    client: httpx.AsyncClient,
) -> None:
    source = await create_list(client, "Source")
    waiting = await create_task(client, title="already in inbox")
    moving = [
        (await create_task(client, title=f"s{i}", list_id=source["id"]))["id"] for i in range(2)
    ]

    response = await client.delete(
        f"{LISTS}/{source['id']}", params={"tasks": "move", "move_to": "inbox"}
    )

    assert response.status_code == 204, response.text
    assert await in_order(client, "inbox") == [waiting["id"], *moving]


async def test_a_task_created_after_a_list_was_merged_in_goes_last(
    client: httpx.AsyncClient,
) -> None:
    source = await create_list(client, "Source")
    moving = [
        (await create_task(client, title=f"s{i}", list_id=source["id"]))["id"] for i in range(2)
    ]
    response = await client.delete(
        f"{LISTS}/{source['id']}", params={"tasks": "move", "move_to": "inbox"}
    )
    assert response.status_code == 204, response.text

    newest = await create_task(client, title="newest")

    assert await in_order(client, "inbox") == [*moving, newest["id"]]


async def test_moving_tasks_to_the_list_being_deleted_is_422_and_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    doomed = await create_list(client, "Doomed")
    task = await create_task(client, list_id=doomed["id"])
    path = f"{LISTS}/{doomed['id']}"

    assert_problem(
        await client.delete(path, params={"tasks": "move", "move_to": doomed["id"]}), 422
    )
    assert_problem(await client.delete(path, params={"tasks": "move"}), 422)
    assert_problem(await client.delete(path, params={"move_to": "inbox"}), 422)
    assert_problem(await client.delete(path, params={"tasks": "keep"}), 422)

    assert (await get_list(client, doomed["id"]))["task_count"] == 1
    assert (await stored_task(engine, task["id"]) or {}).get("version") == 1


async def test_deleting_a_list_with_a_stale_if_match_is_412(client: httpx.AsyncClient) -> None:
    created = await create_list(client)
    await client.patch(f"{LISTS}/{created['id']}", json={"name": "renamed"})

    stale = await client.delete(f"{LISTS}/{created['id']}", headers={"If-Match": '"1"'})
    assert_problem(stale, 412)
    fresh = await client.delete(f"{LISTS}/{created['id']}", headers={"If-Match": '"2"'})
    assert fresh.status_code == 204, fresh.text


async def test_a_missing_list_is_404(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    await create_list(client)
    assert_problem(await client.get(f"{LISTS}/{missing}"), 404)
    assert_problem(await client.patch(f"{LISTS}/{missing}", json={"name": "x"}), 404)
    assert_problem(await client.delete(f"{LISTS}/{missing}"), 404)
    assert_problem(await client.post(f"{LISTS}/{missing}/move", json={}), 404)
    assert_problem(await client.get(f"{LISTS}/not-a-uuid"), 422)


# --- another user's list -------------------------------------------------------------------------


async def test_another_users_list_is_404_in_every_path_and_unchanged(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    theirs = await create_list(client, "Bob's", user="bob")
    bobs_task = await create_task(client, user="bob", title="bob's", list_id=theirs["id"])
    await create_list(client, "Alice's")
    path = f"{LISTS}/{theirs['id']}"
    before = await stored_lists(engine, user="bob")

    assert_problem(await client.get(path), 404)
    assert_problem(await client.get(path, headers={"If-None-Match": '"1"'}), 404)
    assert_problem(await client.patch(path, json={"name": "mine"}), 404)
    assert_problem(
        await client.patch(path, json={"name": "mine"}, headers={"If-Match": '"1"'}), 404
    )
    assert_problem(await client.delete(path), 404)
    assert_problem(await client.delete(path, params={"tasks": "move", "move_to": "inbox"}), 404)
    assert_problem(await client.post(f"{path}/move", json={}), 404)

    assert await stored_lists(engine, user="bob") == before
    assert (await stored_task(engine, bobs_task["id"]) or {}).get("version") == 1


async def test_a_task_in_another_users_list_is_404_naming_the_list(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    theirs = await create_list(client, "Bob's", user="bob")
    mine = await create_task(client, title="mine")
    tasks_before = await count_rows(engine, "tasks")

    created = await client.post(TASKS, json={"title": "sneaky", "list_id": theirs["id"]})
    body = assert_problem(created, 404)
    assert theirs["id"] in body["detail"]
    patched = await client.patch(f"{TASKS}/{mine['id']}", json={"list_id": theirs["id"]})
    assert theirs["id"] in assert_problem(patched, 404)["detail"]
    moved = await client.post(f"{TASKS}/{mine['id']}/move", json={"list_id": theirs["id"]})
    assert theirs["id"] in assert_problem(moved, 404)["detail"]

    assert await count_rows(engine, "tasks") == tasks_before
    assert (await stored_task(engine, mine["id"]) or {}).get("version") == 1
    assert (await get_list(client, theirs["id"], user="bob"))["task_count"] == 0


async def test_moving_tasks_into_another_users_list_on_delete_is_404_and_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    theirs = await create_list(client, "Bob's", user="bob")
    doomed = await create_list(client, "Doomed")
    task = await create_task(client, list_id=doomed["id"])

    response = await client.delete(
        f"{LISTS}/{doomed['id']}", params={"tasks": "move", "move_to": theirs["id"]}
    )

    assert theirs["id"] in assert_problem(response, 404)["detail"]
    assert (await get_list(client, doomed["id"]))["task_count"] == 1
    stored = await stored_task(engine, task["id"])
    assert stored is not None and stored["version"] == 1
    assert (await get_list(client, theirs["id"], user="bob"))["task_count"] == 0


async def test_bobs_inbox_alias_is_his_own(client: httpx.AsyncClient) -> None:
    await create_task(client, title="alice's")
    bobs = await client.get("/api/bob/lists/inbox")
    assert bobs.status_code == 200, bobs.text
    assert bobs.json()["id"] == str(inbox_id("bob"))
    assert bobs.json()["task_count"] == 0


# --- quota --------------------------------------------------------------------------------------


async def test_creating_lists_past_the_quota_is_403_and_stores_nothing(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running(settings.model_copy(update={"quota_lists_per_user": 3})) as client:
        await create_list(client, "one")
        await create_list(client, "two")  # with the inbox: 3

        body = assert_problem(await client.post(LISTS, json={"name": "three"}), 403)
        await create_list(client, "bob's", user="bob")  # bob's quota is his own
        limits = (await client.get("/api/alice/limits")).json()

    assert body["type"] == "/problems/quota-exceeded"
    assert (body["resource"], body["limit"]) == ("lists", 3)
    assert [row["name"] for row in await stored_lists(engine)] == ["Inbox", "one", "two"]
    assert limits["lists"] == {"limit": 3, "used": 3}


async def test_deleting_a_list_frees_quota(settings: Settings) -> None:
    async with running(settings.model_copy(update={"quota_lists_per_user": 2})) as client:
        created = await create_list(client, "one")
        assert_problem(await client.post(LISTS, json={"name": "two"}), 403)
        assert (await client.delete(f"{LISTS}/{created['id']}")).status_code == 204
        await create_list(client, "two")


# --- the order of lists --------------------------------------------------------------------------


async def names(client: httpx.AsyncClient) -> list[str]:
    return [item["name"] for item in await all_lists(client)]


async def test_a_list_moves_after_or_before_another_or_first(client: httpx.AsyncClient) -> None:
    a = await create_list(client, "A")
    b = await create_list(client, "B")
    c = await create_list(client, "C")

    after = await client.post(f"{LISTS}/{a['id']}/move", json={"after_id": c["id"]})
    assert after.status_code == 200, after.text
    assert after.headers["ETag"] == f'"{after.json()["version"]}"' == '"2"'
    assert await names(client) == ["Inbox", "B", "C", "A"]

    before = await client.post(f"{LISTS}/{c['id']}/move", json={"before_id": b["id"]})
    assert before.status_code == 200, before.text
    assert await names(client) == ["Inbox", "C", "B", "A"]

    first = await client.post(f"{LISTS}/{a['id']}/move", json={})
    assert first.status_code == 200, first.text
    assert await names(client) == ["A", "Inbox", "C", "B"]

    inbox_after = await client.post(f"{LISTS}/inbox/move", json={"after_id": b["id"]})
    assert inbox_after.status_code == 200, inbox_after.text
    assert await names(client) == ["A", "C", "B", "Inbox"]

    by_alias = await client.post(f"{LISTS}/{a['id']}/move", json={"before_id": "inbox"})
    assert by_alias.status_code == 200, by_alias.text
    assert await names(client) == ["C", "B", "A", "Inbox"]


async def test_bad_list_moves_are_422_and_change_nothing(client: httpx.AsyncClient) -> None:
    a = await create_list(client, "A")
    b = await create_list(client, "B")
    theirs = await create_list(client, "Bob's", user="bob")
    path = f"{LISTS}/{a['id']}/move"

    assert_problem(await client.post(path, json={"after_id": b["id"], "before_id": b["id"]}), 422)
    assert_problem(await client.post(path, json={"after_id": a["id"]}), 422)
    assert_problem(await client.post(path, json={"before_id": a["id"]}), 422)
    assert_problem(await client.post(path, json={"after_id": theirs["id"]}), 422)
    assert_problem(await client.post(path, json={"after_id": str(uuid.uuid4())}), 422)
    assert_problem(await client.post(path, json={"position": "a"}), 422)

    assert await names(client) == ["Inbox", "A", "B"]
    assert (await get_list(client, a["id"]))["version"] == 1
    assert [item["name"] for item in await all_lists(client, user="bob")] == ["Inbox", "Bob's"]


async def test_moving_a_list_with_a_stale_if_match_is_412(client: httpx.AsyncClient) -> None:
    a = await create_list(client, "A")
    await create_list(client, "B")
    await client.patch(f"{LISTS}/{a['id']}", json={"color": "#000000"})

    stale = await client.post(f"{LISTS}/{a['id']}/move", json={}, headers={"If-Match": '"1"'})

    assert_problem(stale, 412)
    assert await names(client) == ["Inbox", "A", "B"]


async def test_concurrent_list_creates_never_pass_the_quota_nor_tie(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running(settings.model_copy(update={"quota_lists_per_user": 5})) as client:
        await all_lists(client, user="racer")  # provisioned: the race is on the quota alone
        responses = await asyncio.gather(
            *(client.post("/api/racer/lists", json={"name": f"list {i}"}) for i in range(12))
        )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 4 + [403] * 8, [r.text for r in responses]
    stored = await stored_lists(engine, user="racer")
    assert len(stored) == 5
    assert len({row["position"] for row in stored}) == 5


async def test_filtering_by_another_users_list_shows_none_of_his_tasks(
    client: httpx.AsyncClient,
) -> None:
    theirs = await create_list(client, "Bob's", user="bob")
    await create_task(client, user="bob", title="secret", list_id=theirs["id"])
    await create_task(client, title="mine")

    for sort in ("-created_at", "position"):
        response = await client.get(TASKS, params={"list_id": theirs["id"], "sort": sort})
        assert response.status_code == 200, response.text
        assert response.json()["items"] == []
