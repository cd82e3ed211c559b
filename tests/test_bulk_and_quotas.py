"""Bulk changes (all or nothing), the task quota (race-free), the limits resource and the
label-id rules of a task, through HTTP and checked against what the database stores."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from support import assert_problem, count_rows, running, snapshot, stored_task
from todo_api.settings import Settings

QUOTA_PROBLEM = "/problems/quota-exceeded"


# --- helpers -------------------------------------------------------------------------------------


async def create(client: httpx.AsyncClient, user: str = "alice", **fields: Any) -> dict[str, Any]:
    response = await client.post(f"/api/{user}/tasks", json={"title": "t", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def new_label(client: httpx.AsyncClient, user: str, name: str) -> str:
    response = await client.post(f"/api/{user}/labels", json={"name": name})
    assert response.status_code == 201, response.text
    label_id: str = response.json()["id"]
    return label_id


async def new_list(client: httpx.AsyncClient, user: str, name: str) -> str:
    response = await client.post(f"/api/{user}/lists", json={"name": name})
    assert response.status_code == 201, response.text
    list_id: str = response.json()["id"]
    return list_id


async def bulk(
    client: httpx.AsyncClient, body: dict[str, Any], user: str = "alice"
) -> httpx.Response:
    return await client.post(f"/api/{user}/tasks/bulk", json=body)


async def get(client: httpx.AsyncClient, task_id: str, user: str = "alice") -> dict[str, Any]:
    response = await client.get(f"/api/{user}/tasks/{task_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def stored_labels_of(engine: AsyncEngine, task_id: str) -> set[str]:
    sqlite = engine.dialect.name == "sqlite"
    parsed = uuid.UUID(task_id)
    async with engine.connect() as connection:
        rows = await connection.execute(
            sa.text("SELECT label_id FROM task_labels WHERE task_id = :id"),
            {"id": parsed.hex if sqlite else parsed},
        )
        return {str(uuid.UUID(str(row[0]))) for row in rows}


def assert_quota_problem(response: httpx.Response, resource: str, limit: int) -> None:
    body = assert_problem(response, 403)
    assert body["type"] == QUOTA_PROBLEM
    assert (body["resource"], body["limit"]) == (resource, limit)


def with_quota(settings: Settings, **quotas: int) -> Settings:
    return settings.model_copy(update=quotas)


# --- bulk ----------------------------------------------------------------------------------------


async def test_bulk_sets_fields_and_answers_the_tasks_in_the_order_of_ids(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    tasks = [await create(client, title=f"t{i}") for i in range(4)]
    untouched = tasks[3]
    ids = [tasks[2]["id"], tasks[0]["id"], tasks[1]["id"]]

    response = await bulk(client, {"ids": ids, "set": {"completed": True, "priority": "high"}})

    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["id"] for item in items] == ids
    for item, before in zip(items, [tasks[2], tasks[0], tasks[1]], strict=True):
        assert (item["completed"], item["priority"], item["title"]) == (
            True,
            "high",
            before["title"],
        )
        assert item["completed_at"] is not None
        assert item["version"] == before["version"] + 1
        assert await get(client, item["id"]) == item
        row = await stored_task(engine, item["id"])
        assert row is not None and bool(row["completed"]) and row["priority"] == 3
    assert await get(client, untouched["id"]) == untouched


async def test_bulk_absent_members_stay_as_they_were(client: httpx.AsyncClient) -> None:
    task = await create(client, priority="low", due={"date": "2030-01-01"}, completed=True)

    response = await bulk(client, {"ids": [task["id"]], "set": {"priority": "medium"}})

    [item] = response.json()["items"]
    assert (item["priority"], item["due"], item["completed"]) == ("medium", task["due"], True)
    assert item["completed_at"] == task["completed_at"]
    assert item["list_id"] == task["list_id"] and item["position"] == task["position"]


async def test_bulk_sets_a_due_and_null_clears_it(client: httpx.AsyncClient) -> None:
    first, second = await create(client), await create(client, due={"date": "2030-01-01"})
    due = {"date": "2026-10-25", "time": "02:30", "timezone": "Europe/Berlin"}

    response = await bulk(client, {"ids": [first["id"], second["id"]], "set": {"due": due}})

    assert response.status_code == 200, response.text
    for item in response.json()["items"]:
        assert item["due"] == {**due, "time": "02:30:00", "at": "2026-10-25T00:30:00Z"}
    cleared = await bulk(client, {"ids": [first["id"]], "set": {"due": None}})
    assert cleared.json()["items"][0]["due"] is None
    assert (await get(client, second["id"]))["due"]["at"] == "2026-10-25T00:30:00Z"


async def test_bulk_reopening_clears_completed_at(client: httpx.AsyncClient) -> None:
    task = await create(client, completed=True)
    response = await bulk(client, {"ids": [task["id"]], "set": {"completed": False}})
    [item] = response.json()["items"]
    assert (item["completed"], item["completed_at"]) == (False, None)


async def test_bulk_completing_a_completed_task_keeps_its_completed_at(
    client: httpx.AsyncClient,
) -> None:
    done = await create(client, completed=True)
    response = await bulk(client, {"ids": [done["id"]], "set": {"completed": True}})
    assert response.json()["items"][0]["completed_at"] == done["completed_at"]


@pytest.mark.parametrize("whose", ["another user's", "random"])
async def test_bulk_with_an_id_that_is_not_the_users_is_404_naming_it_and_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, whose: str
) -> None:
    mine = [await create(client) for _ in range(2)]
    foreign = (await create(client, "bob"))["id"] if whose != "random" else str(uuid.uuid4())
    label = await new_label(client, "alice", "work")
    ids = [mine[0]["id"], foreign, mine[1]["id"]]
    before = await snapshot(engine, *ids)

    response = await bulk(
        client,
        {"ids": ids, "set": {"completed": True, "priority": "high", "list_id": "inbox",
                             "due": {"date": "2030-01-01"}}, "add_label_ids": [label]},
    )  # fmt: skip

    body = assert_problem(response, 404)
    assert foreign in body["detail"]
    assert mine[0]["id"] not in body["detail"]
    assert await snapshot(engine, *ids) == before
    for task in mine:
        assert await get(client, task["id"]) == task
    assert await count_rows(engine, "task_labels") == 0


@pytest.mark.parametrize(
    "ids",
    [
        [str(uuid.uuid4()) for _ in range(201)],
        ["0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"] * 2,
        [],
        ["not-a-uuid"],
        "0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
    ],
    ids=["201 ids", "duplicate", "empty", "not a uuid", "not a list"],
)
async def test_bulk_ids_must_be_1_to_200_distinct_ids(client: httpx.AsyncClient, ids: Any) -> None:
    body = assert_problem(await bulk(client, {"ids": ids, "set": {"completed": True}}), 422)
    assert all(error["field"].startswith("ids") for error in body["errors"]), body["errors"]


async def test_bulk_of_200_ids_is_accepted(client: httpx.AsyncClient) -> None:
    task = await create(client)
    ids = [task["id"], *(str(uuid.uuid4()) for _ in range(199))]
    assert_problem(await bulk(client, {"ids": ids, "set": {"completed": True}}), 404)


@pytest.mark.parametrize("member", ["completed", "priority", "list_id"])
async def test_bulk_null_for_a_member_that_cannot_be_null_is_422(
    client: httpx.AsyncClient, engine: AsyncEngine, member: str
) -> None:
    task = await create(client, priority="low")

    response = await bulk(client, {"ids": [task["id"]], "set": {member: None}})

    body = assert_problem(response, 422)
    assert [error["field"] for error in body["errors"]] == [f"set.{member}"]
    assert await get(client, task["id"]) == task


@pytest.mark.parametrize(
    "change",
    [{"set": {"priority": 3}}, {"set": {"colour": "red"}}, {"set": {"completed": "yes"}},
     {"set": {"due": {"date": "2026-02-30"}}}, {"set": {"title": "x"}}],
)  # fmt: skip
async def test_bulk_invalid_set_is_422(client: httpx.AsyncClient, change: dict[str, Any]) -> None:
    task = await create(client)
    assert_problem(await bulk(client, {"ids": [task["id"]], **change}), 422)
    assert await get(client, task["id"]) == task


async def test_bulk_list_id_moves_the_tasks_to_the_end_of_that_list_in_ids_order(
    client: httpx.AsyncClient,
) -> None:
    errands = await new_list(client, "alice", "Errands")
    already = [await create(client, list_id=errands) for _ in range(2)]
    moving = [await create(client) for _ in range(3)]
    ids = [moving[1]["id"], moving[2]["id"], moving[0]["id"]]

    response = await bulk(client, {"ids": ids, "set": {"list_id": errands}})

    assert response.status_code == 200, response.text
    assert [item["id"] for item in response.json()["items"]] == ids
    assert {item["list_id"] for item in response.json()["items"]} == {errands}
    order = await client.get(
        "/api/alice/tasks", params={"list_id": errands, "sort": "position", "limit": 200}
    )
    assert [item["id"] for item in order.json()["items"]] == [t["id"] for t in already] + ids
    for task in moving:  # ids never change when a task moves
        assert (await get(client, task["id"]))["list_id"] == errands
    inbox = await client.get("/api/alice/tasks", params={"list_id": "inbox"})
    assert inbox.json()["items"] == []


async def test_bulk_list_id_inbox_alias_and_own_list_keeps_position(
    client: httpx.AsyncClient,
) -> None:
    errands = await new_list(client, "alice", "Errands")
    away = await create(client, list_id=errands)
    home = await create(client)

    response = await bulk(client, {"ids": [away["id"], home["id"]], "set": {"list_id": "inbox"}})

    assert response.status_code == 200, response.text
    moved, stayed = response.json()["items"]
    assert moved["list_id"] == stayed["list_id"] == home["list_id"]
    assert stayed["position"] == home["position"]  # already there: not moved
    assert moved["position"] > home["position"]  # to the end


@pytest.mark.parametrize("whose", ["another user's", "random"])
async def test_bulk_list_id_that_is_not_the_users_is_404_and_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, whose: str
) -> None:
    task = await create(client, priority="low")
    target = await new_list(client, "bob", "Bob's") if whose != "random" else str(uuid.uuid4())
    before = await snapshot(engine, task["id"])

    response = await bulk(
        client, {"ids": [task["id"]], "set": {"list_id": target, "priority": "high"}}
    )

    body = assert_problem(response, 404)
    assert target in body["detail"]
    assert await snapshot(engine, task["id"]) == before


async def test_bulk_adds_and_removes_labels(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    work, home, urgent = [await new_label(client, "alice", n) for n in ("work", "home", "urgent")]
    first = await create(client, label_ids=[work, home])
    second = await create(client)
    third = await create(client, label_ids=[urgent])

    response = await bulk(
        client,
        {"ids": [first["id"], second["id"]], "add_label_ids": [urgent, home],
         "remove_label_ids": [work]},
    )  # fmt: skip

    assert response.status_code == 200, response.text
    items = response.json()["items"]
    for item in items:
        assert set(item["label_ids"]) == {urgent, home}
        assert {label["name"] for label in item["labels"]} == {"urgent", "home"}
        assert await stored_labels_of(engine, item["id"]) == {urgent, home}
        assert await get(client, item["id"]) == item
    assert await stored_labels_of(engine, third["id"]) == {urgent}


@pytest.mark.parametrize("member", ["add_label_ids", "remove_label_ids"])
@pytest.mark.parametrize("whose", ["another user's", "random"])
async def test_bulk_label_id_that_is_not_the_users_is_422_and_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, member: str, whose: str
) -> None:
    mine = await new_label(client, "alice", "work")
    task = await create(client, label_ids=[mine])
    foreign = await new_label(client, "bob", "work") if whose != "random" else str(uuid.uuid4())
    before = await snapshot(engine, task["id"])

    response = await bulk(
        client, {"ids": [task["id"]], "set": {"completed": True}, member: [mine, foreign]}
    )

    body = assert_problem(response, 422)
    assert foreign in body["detail"] and mine not in body["detail"]
    assert await snapshot(engine, task["id"]) == before
    assert await stored_labels_of(engine, task["id"]) == {mine}


@pytest.mark.parametrize(
    "change",
    [
        {"add_label_ids": ["0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"] * 2},
        {"add_label_ids": [str(uuid.uuid4()) for _ in range(51)]},
        {"add_label_ids": ["0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"],
         "remove_label_ids": ["0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"]},
    ],
    ids=["duplicate", "51", "added and removed"],
)  # fmt: skip
async def test_bulk_malformed_label_changes_are_422(
    client: httpx.AsyncClient, change: dict[str, Any]
) -> None:
    task = await create(client)
    assert_problem(await bulk(client, {"ids": [task["id"]], **change}), 422)


async def test_bulk_past_the_labels_per_task_quota_is_403_and_changes_nothing(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running(with_quota(settings, quota_labels_per_task=2)) as client:
        a, b, c = [await new_label(client, "alice", n) for n in "abc"]
        full = await create(client, label_ids=[a, b])
        other = await create(client)
        before = await snapshot(engine, full["id"], other["id"])

        response = await bulk(client, {"ids": [other["id"], full["id"]], "add_label_ids": [c]})

        assert_quota_problem(response, "labels per task", 2)
        assert await snapshot(engine, full["id"], other["id"]) == before
        assert await stored_labels_of(engine, other["id"]) == set()
        assert await stored_labels_of(engine, full["id"]) == {a, b}
        # Swapping one for another stays within it.
        swapped = await bulk(
            client, {"ids": [full["id"]], "add_label_ids": [c], "remove_label_ids": [a]}
        )
        assert swapped.status_code == 200, swapped.text
        assert set(swapped.json()["items"][0]["label_ids"]) == {b, c}


# --- label ids on a task -------------------------------------------------------------------------


async def test_label_ids_set_on_create_come_back_with_their_names(
    client: httpx.AsyncClient,
) -> None:
    work, home = await new_label(client, "alice", "work"), await new_label(client, "alice", "Home")
    task = await create(client, label_ids=[work, home])
    assert set(task["label_ids"]) == {work, home}
    assert sorted(label["name"] for label in task["labels"]) == ["Home", "work"]
    assert await get(client, task["id"]) == task


@pytest.mark.parametrize(
    "label_ids",
    [
        [str(uuid.uuid4()) for _ in range(51)],
        ["0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"] * 2,
        "0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
        [42],
        None,
    ],
    ids=["51", "duplicate", "not a list", "number", "null"],
)
async def test_malformed_label_ids_are_422_naming_the_field(
    client: httpx.AsyncClient, engine: AsyncEngine, label_ids: Any
) -> None:
    response = await client.post("/api/alice/tasks", json={"title": "t", "label_ids": label_ids})
    body = assert_problem(response, 422)
    assert all(error["field"].startswith("label_ids") for error in body["errors"]), body
    assert await count_rows(engine) == 0


async def test_ten_thousand_label_ids_are_refused_before_any_lookup(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    label_ids = [str(uuid.uuid4()) for _ in range(10_000)]
    response = await client.post("/api/alice/tasks", json={"title": "t", "label_ids": label_ids})
    assert_problem(response, 413)  # 370 kB: past the body limit
    assert await count_rows(engine) == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
@pytest.mark.parametrize("whose", ["another user's", "random"])
async def test_a_label_id_that_is_not_the_users_is_422_naming_it(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, whose: str
) -> None:
    mine = await new_label(client, "alice", "work")
    task = await create(client, label_ids=[mine])
    foreign = await new_label(client, "bob", "work") if whose != "random" else str(uuid.uuid4())
    url = "/api/alice/tasks" + ("" if method == "POST" else f"/{task['id']}")

    response = await client.request(
        method, url, json={"title": "changed", "label_ids": [mine, foreign]}
    )

    body = assert_problem(response, 422)
    assert [error["field"] for error in body["errors"]] == ["label_ids"]
    assert foreign in body["errors"][0]["message"] and mine not in body["errors"][0]["message"]
    assert await count_rows(engine) == 1
    assert await get(client, task["id"]) == task


async def test_patch_label_ids_replaces_the_set_and_empty_clears_it(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    work, home = await new_label(client, "alice", "work"), await new_label(client, "alice", "home")
    task = await create(client, label_ids=[work])

    replaced = await client.patch(f"/api/alice/tasks/{task['id']}", json={"label_ids": [home]})
    assert replaced.json()["label_ids"] == [home]
    untouched = await client.patch(f"/api/alice/tasks/{task['id']}", json={"title": "x"})
    assert untouched.json()["label_ids"] == [home]
    cleared = await client.patch(f"/api/alice/tasks/{task['id']}", json={"label_ids": []})
    assert (cleared.json()["label_ids"], cleared.json()["labels"]) == ([], [])
    assert await stored_labels_of(engine, task["id"]) == set()


async def test_more_labels_than_the_per_task_quota_is_403(settings: Settings) -> None:
    async with running(with_quota(settings, quota_labels_per_task=2)) as client:
        ids = [await new_label(client, "alice", n) for n in "abc"]
        response = await client.post("/api/alice/tasks", json={"title": "t", "label_ids": ids})
        assert_quota_problem(response, "labels per task", 2)
        task = await create(client, label_ids=ids[:2])
        patched = await client.patch(f"/api/alice/tasks/{task['id']}", json={"label_ids": ids})
        assert_quota_problem(patched, "labels per task", 2)


# --- the task quota ------------------------------------------------------------------------------


async def test_a_create_past_the_task_quota_is_403_and_stores_nothing(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running(with_quota(settings, quota_tasks_per_user=3)) as client:
        tasks = [await create(client, completed=i == 0) for i in range(3)]  # completed count too

        response = await client.post("/api/alice/tasks", json={"title": "fourth"})

        assert_quota_problem(response, "tasks", 3)
        assert await count_rows(engine) == 3
        # Per user: another user still has room.
        await create(client, "bob")
        # Deleting one frees a slot, once.
        deleted = await client.delete(f"/api/alice/tasks/{tasks[1]['id']}")
        assert deleted.status_code == 204
        await create(client, title="fourth")
        assert_quota_problem(await client.post("/api/alice/tasks", json={"title": "x"}), "tasks", 3)


async def test_the_task_quota_applies_to_creates_with_labels_and_into_lists(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running(with_quota(settings, quota_tasks_per_user=2)) as client:
        label = await new_label(client, "alice", "work")
        errands = await new_list(client, "alice", "Errands")
        await create(client)
        await create(client)

        for body in ({"label_ids": [label]}, {"list_id": errands}, {"list_id": "inbox"}):
            response = await client.post("/api/alice/tasks", json={"title": "t", **body})
            assert_quota_problem(response, "tasks", 2)
        assert await count_rows(engine) == 2


async def test_bulk_deletes_and_list_deletes_free_task_slots(settings: Settings) -> None:
    async with running(with_quota(settings, quota_tasks_per_user=3)) as client:
        errands = await new_list(client, "alice", "Errands")
        await create(client, completed=True)
        await create(client, completed=True)
        await create(client, list_id=errands)
        assert_quota_problem(await client.post("/api/alice/tasks", json={"title": "t"}), "tasks", 3)

        deleted = await client.delete("/api/alice/tasks", params={"completed": "true"})
        assert deleted.json() == {"deleted": 2}
        await create(client)
        gone = await client.delete(f"/api/alice/lists/{errands}")  # its task goes with it
        assert gone.status_code == 204, gone.text
        await create(client)
        await create(client)
        limits = (await client.get("/api/alice/limits")).json()
        assert limits["tasks"] == {"limit": 3, "used": 3}


async def test_updates_and_moves_are_allowed_at_the_task_quota(settings: Settings) -> None:
    async with running(with_quota(settings, quota_tasks_per_user=1)) as client:
        errands = await new_list(client, "alice", "Errands")
        task = await create(client)
        for method, url, body in (
            ("PATCH", f"/api/alice/tasks/{task['id']}", {"title": "renamed"}),
            ("PUT", f"/api/alice/tasks/{task['id']}", {"title": "replaced"}),
            ("POST", f"/api/alice/tasks/{task['id']}/move", {"list_id": errands}),
            ("POST", "/api/alice/tasks/bulk", {"ids": [task["id"]], "set": {"list_id": "inbox"}}),
        ):
            response = await client.request(method, url, json=body)
            assert response.status_code == 200, (method, url, response.text)


@pytest.mark.through_pooler
@pytest.mark.parametrize("provisioned", [False, True], ids=["new user", "existing user"])
async def test_100_concurrent_creates_never_pass_the_task_quota(
    settings: Settings, engine: AsyncEngine, provisioned: bool
) -> None:
    async with running(with_quota(settings, quota_tasks_per_user=10)) as client:
        if provisioned:
            assert (await client.get("/api/racer")).status_code == 200

        responses = await asyncio.gather(
            *(client.post("/api/racer/tasks", json={"title": f"t{i}"}) for i in range(100))
        )

        statuses = sorted(response.status_code for response in responses)
        assert statuses == [201] * 10 + [403] * 90, [
            r.text for r in responses if r.status_code >= 500
        ]
        for response in responses:
            if response.status_code == 403:
                assert_quota_problem(response, "tasks", 10)
        assert await count_rows(engine) == 10
        assert (await client.get("/api/racer/limits")).json()["tasks"] == {"limit": 10, "used": 10}


async def test_a_keyed_create_obeys_the_quota_and_a_refusal_is_never_replayed(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running(with_quota(settings, quota_tasks_per_user=2)) as client:
        first = await create(client)
        await create(client)
        keyed = {"Idempotency-Key": "create-report-1"}
        body = {"title": "report"}

        refused = await client.post("/api/alice/tasks", json=body, headers=keyed)
        assert_quota_problem(refused, "tasks", 2)
        again = await client.post("/api/alice/tasks", json=body, headers=keyed)
        assert_quota_problem(again, "tasks", 2)  # still full: refused again, not a stored 201
        assert await count_rows(engine) == 2

        await client.delete(f"/api/alice/tasks/{first['id']}")
        created = await client.post("/api/alice/tasks", json=body, headers=keyed)
        assert created.status_code == 201, created.text
        assert "Idempotent-Replayed" not in created.headers
        replayed = await client.post("/api/alice/tasks", json=body, headers=keyed)
        assert replayed.status_code == 201
        assert replayed.headers.get("Idempotent-Replayed") == "true"
        assert replayed.json() == created.json()
        assert await count_rows(engine) == 2


async def test_a_keyed_create_replays_even_when_the_quota_is_full_since(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running(with_quota(settings, quota_tasks_per_user=1)) as client:
        keyed = {"Idempotency-Key": "k-1"}
        created = await client.post("/api/alice/tasks", json={"title": "t"}, headers=keyed)
        assert created.status_code == 201, created.text

        retried = await client.post("/api/alice/tasks", json={"title": "t"}, headers=keyed)

        # The retry of a create that happened is its answer, not a quota refusal.
        assert retried.status_code == 201, retried.text
        assert retried.json()["id"] == created.json()["id"]
        assert await count_rows(engine) == 1


# --- limits --------------------------------------------------------------------------------------


async def test_limits_show_each_quota_with_its_use(settings: Settings) -> None:
    quotas = {
        "quota_tasks_per_user": 7, "quota_lists_per_user": 6, "quota_labels_per_user": 5,
        "quota_labels_per_task": 4,
    }  # fmt: skip
    async with running(with_quota(settings, **quotas)) as client:
        fresh = await client.get("/api/nobody/limits")
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["tasks"] == {"limit": 7, "used": 0}

        await new_list(client, "alice", "Errands")
        await new_label(client, "alice", "work")
        await new_label(client, "alice", "home")
        for _ in range(3):
            await create(client)
        await create(client, "bob")

        response = await client.get("/api/alice/limits")

        assert response.status_code == 200, response.text
        assert response.json() == {
            "tasks": {"limit": 7, "used": 3},
            "lists": {"limit": 6, "used": 2},  # the inbox counts
            "labels": {"limit": 5, "used": 2},
            "labels_per_task": {"limit": 4, "used": None},
        }
