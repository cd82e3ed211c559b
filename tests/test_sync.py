"""The sync feed through HTTP: every write of a user takes the next value of the user's change
sequence, `GET /api/{user}/sync` sends what changed since a token (tombstones of deletes
included), in pages, and a client that applies the pages ends up with the live state, even
while writes go on between (or, on PostgreSQL, during) its requests. Checked against what the
database stores (`users.change_seq`, each row's `change_seq`, `tombstones`)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from support import app_of, assert_problem, create_task, running
from todo_api.settings import Settings
from todo_api.sync.repository import purge_tombstones
from todo_api.tables.lists import inbox_id

pytestmark = pytest.mark.through_pooler

USER = "alice"
API = f"/api/{USER}"
KINDS = ("label", "list", "task")
TABLES = {"task": "tasks", "list": "lists", "label": "labels"}
INVALID_TOKEN = "/problems/invalid-sync-token"
TOKEN_EXPIRED = "/problems/sync-token-expired"
# A list's representation counts its tasks, but a task's write is not a write of its list:
# a synced client derives these from its tasks (see `assert_same_state`).
DERIVED_LIST_FIELDS = ("task_count", "open_task_count")

Change = dict[str, Any]
Key = tuple[str, str]  # (kind, id)
State = dict[Key, dict[str, Any]]


# --- HTTP helpers --------------------------------------------------------------------------------


async def sync(
    client: httpx.AsyncClient, token: str | None = None, limit: int | None = None, user: str = USER
) -> dict[str, Any]:
    """One page of the user's feed; asserts 200 and the shape of the answer and its changes."""
    params: dict[str, str | int] = {}
    if token is not None:
        params["token"] = token
    if limit is not None:
        params["limit"] = limit
    response = await client.get(f"/api/{user}/sync", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    page: dict[str, Any] = response.json()
    assert set(page) == {"changes", "next_token", "has_more"}, page
    assert isinstance(page["next_token"], str) and page["next_token"], page
    assert isinstance(page["has_more"], bool), page
    assert len(page["changes"]) <= (limit if limit is not None else 500)
    if page["has_more"]:
        assert page["changes"], "has_more with an empty page would never end"
    for change in page["changes"]:
        assert_change_shape(change)
    return page


def assert_change_shape(change: Change) -> None:
    assert set(change) == {"kind", "id", "change_seq", "deleted", "data"}, change
    assert change["kind"] in KINDS, change
    assert str(uuid.UUID(change["id"])) == change["id"], change
    assert type(change["change_seq"]) is int and change["change_seq"] > 0, change
    assert type(change["deleted"]) is bool, change
    if change["deleted"]:
        assert change["data"] is None, change
    else:
        assert isinstance(change["data"], dict), change
        assert change["data"]["id"] == change["id"], change
        assert change["data"]["change_seq"] == change["change_seq"], change


async def sync_status(
    client: httpx.AsyncClient, params: dict[str, str], user: str = USER
) -> httpx.Response:
    return await client.get(f"/api/{user}/sync", params=params)


@dataclass
class Feed:
    """A sync followed to its end: every page's changes, and the last page's next_token."""

    pages: list[list[Change]]
    token: str

    @property
    def changes(self) -> list[Change]:
        return [change for page in self.pages for change in page]


async def sync_to_end(
    client: httpx.AsyncClient, token: str | None = None, limit: int | None = None
) -> Feed:
    pages: list[list[Change]] = []
    for _ in range(10_000):
        page = await sync(client, token, limit)
        pages.append(page["changes"])
        token = page["next_token"]
        if not page["has_more"]:
            assert token is not None
            return Feed(pages, token)
    raise AssertionError("the feed never ended (has_more stayed true)")


def apply(state: State, changes: list[Change]) -> None:
    for change in changes:
        key = (change["kind"], change["id"])
        if change["deleted"]:
            state.pop(key, None)
        else:
            state[key] = change["data"]


def keys(changes: list[Change]) -> list[Key]:
    return [(change["kind"], change["id"]) for change in changes]


def by_key(changes: list[Change]) -> dict[Key, Change]:
    found = {(change["kind"], change["id"]): change for change in changes}
    assert len(found) == len(changes), f"a resource appears twice: {keys(changes)}"
    return found


def feed_order(change: Change) -> tuple[int, str, str]:
    # Lower-case hex UUID text orders as the UUIDs' bytes do.
    return change["change_seq"], change["kind"], change["id"]


async def get_json(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def live_state(client: httpx.AsyncClient, user: str = USER) -> State:
    """Every task, list and label of the user, as the GET endpoints answer them."""
    state: State = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor is not None:
            params["cursor"] = cursor
        page = await get_json(client, f"/api/{user}/tasks", **params)
        state |= {("task", task["id"]): task for task in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    for kind, path in (("list", "lists"), ("label", "labels")):
        items = (await get_json(client, f"/api/{user}/{path}"))["items"]
        state |= {(kind, item["id"]): item for item in items}
    return state


def assert_same_state(replica: State, live: State) -> None:
    """The synced client holds exactly the live resources with their full JSON; of a list,
    the task counts (derived, not the list's own change) must match what its tasks say."""

    def own(state: State) -> State:
        return {
            key: {name: value for name, value in data.items() if name not in DERIVED_LIST_FIELDS}
            if key[0] == "list"
            else data
            for key, data in state.items()
        }

    assert sorted(replica) == sorted(live)
    assert own(replica) == own(live)
    for (kind, list_id), data in live.items():
        if kind != "list":
            continue
        mine = [
            task
            for (other, _), task in replica.items()
            if other == "task" and task["list_id"] == list_id
        ]
        counted = (len(mine), sum(not task["completed"] for task in mine))
        assert counted == (data["task_count"], data["open_task_count"]), data


async def create_list(client: httpx.AsyncClient, name: str = "Errands") -> dict[str, Any]:
    response = await client.post(f"{API}/lists", json={"name": name})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def create_label(client: httpx.AsyncClient, name: str = "Work") -> dict[str, Any]:
    response = await client.post(f"{API}/labels", json={"name": name})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def patch_task(client: httpx.AsyncClient, task_id: str, **fields: Any) -> dict[str, Any]:
    response = await client.patch(f"{API}/tasks/{task_id}", json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def delete(client: httpx.AsyncClient, path: str, **params: str) -> None:
    response = await client.delete(f"{API}/{path}", params=params)
    assert response.status_code == 204, response.text


# --- database helpers ----------------------------------------------------------------------------


def db_id(engine: AsyncEngine, value: str) -> Any:
    parsed = uuid.UUID(value)
    return parsed.hex if engine.dialect.name == "sqlite" else parsed


def text_id(value: Any) -> str:
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


async def user_counters(engine: AsyncEngine, user: str = USER) -> tuple[int, int]:
    """(users.change_seq, users.sync_floor)."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                sa.text("SELECT change_seq, sync_floor FROM users WHERE id = :u"), {"u": user}
            )
        ).one()
    return int(row[0]), int(row[1])


async def user_seq(engine: AsyncEngine, user: str = USER) -> int:
    return (await user_counters(engine, user))[0]


async def stored_seq(engine: AsyncEngine, kind: str, item_id: str, user: str = USER) -> int | None:
    async with engine.connect() as connection:
        value = await connection.scalar(
            sa.text(f"SELECT change_seq FROM {TABLES[kind]} WHERE user_id = :u AND id = :id"),
            {"u": user, "id": db_id(engine, item_id)},
        )
    return None if value is None else int(value)


async def stored_tombstones(engine: AsyncEngine, user: str = USER) -> dict[Key, int]:
    """(kind, id) -> change_seq of the user's tombstones."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            sa.text("SELECT kind, id, change_seq FROM tombstones WHERE user_id = :u"), {"u": user}
        )
        return {(str(row[0]), text_id(row[1])): int(row[2]) for row in rows}


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


async def everything_stored(engine: AsyncEngine) -> dict[str, Any]:
    """What a refused sync request must leave as it was."""
    async with engine.connect() as connection:
        users = (
            await connection.execute(
                sa.text("SELECT id, change_seq, sync_floor FROM users ORDER BY id")
            )
        ).all()
    return {
        "users": [tuple(row) for row in users],
        **{table: await count(engine, table) for table in ("tasks", "lists", "labels")},
        "tombstones": await count(engine, "tombstones"),
    }


@dataclass
class ChangeCounter:
    """The user's counter as the database holds it, followed write by write."""

    engine: AsyncEngine
    value: int = 0

    async def start(self) -> int:
        self.value = await user_seq(self.engine)
        return self.value

    async def took_next(self, what: str) -> int:
        now = await user_seq(self.engine)
        assert now == self.value + 1, f"{what}: users.change_seq {self.value} -> {now}"
        self.value = now
        return now

    async def took_none(self, what: str) -> None:
        now = await user_seq(self.engine)
        assert now == self.value, f"{what} (refused): users.change_seq {self.value} -> {now}"


# --- 1. every write takes the next value ---------------------------------------------------------


async def answered(
    seq: ChangeCounter, response: httpx.Response, what: str, kind: str = "task"
) -> dict[str, Any]:
    """A write's answer: its change_seq is the user's next value, and so is its row's."""
    assert response.status_code in (200, 201), f"{what}: {response.text}"
    body: dict[str, Any] = response.json()
    value = await seq.took_next(what)
    assert body["change_seq"] == value, what
    assert await stored_seq(seq.engine, kind, body["id"]) == value, what
    return body


async def test_every_write_answers_with_the_next_change_seq_of_the_user(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    seq = ChangeCounter(engine)
    task = await create_task(client, title="first")
    assert task["change_seq"] == await seq.start() > 0
    assert await stored_seq(engine, "task", task["id"]) == task["change_seq"]
    tid = task["id"]

    await answered(seq, await client.patch(f"{API}/tasks/{tid}", json={"title": "2"}), "PATCH")
    await answered(seq, await client.patch(f"{API}/tasks/{tid}/complete"), "toggle")
    await answered(seq, await client.put(f"{API}/tasks/{tid}", json={"title": "3"}), "PUT")
    await answered(seq, await client.post(f"{API}/tasks", json={"title": "other"}), "POST")
    errands = await answered(
        seq, await client.post(f"{API}/lists", json={"name": "Errands"}), "create list", "list"
    )
    lid = errands["id"]
    await answered(
        seq, await client.patch(f"{API}/lists/{lid}", json={"name": "Chores"}), "patch list", "list"
    )
    await answered(seq, await client.post(f"{API}/lists/{lid}/move", json={}), "move list", "list")
    await answered(
        seq, await client.post(f"{API}/tasks/{tid}/move", json={"list_id": lid}), "move task"
    )
    await answered(
        seq, await client.patch(f"{API}/tasks/{tid}", json={"list_id": "inbox"}), "PATCH list_id"
    )
    label = await answered(
        seq, await client.post(f"{API}/labels", json={"name": "Work"}), "create label", "label"
    )
    await answered(
        seq,
        await client.patch(f"{API}/labels/{label['id']}", json={"color": "#112233"}),
        "patch label",
        "label",
    )
    await answered(
        seq,
        await client.patch(f"{API}/tasks/{tid}", json={"label_ids": [label["id"]]}),
        "labelling",
    )

    await delete(client, f"tasks/{tid}")
    value = await seq.took_next("delete task")
    assert (await stored_tombstones(engine))[("task", tid)] == value


async def test_a_write_of_several_rows_stamps_them_all_with_one_value(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    seq = ChangeCounter(engine)
    errands = await create_list(client, "Errands")
    label = await create_label(client, "Work")
    fields = {"list_id": errands["id"], "label_ids": [label["id"]]}
    ids = [(await create_task(client, title=f"t{i}", **fields))["id"] for i in range(3)]
    await seq.start()

    response = await client.post(
        f"{API}/tasks/bulk", json={"ids": ids, "set": {"priority": "high"}}
    )
    assert response.status_code == 200, response.text
    value = await seq.took_next("bulk of 3")
    assert [item["change_seq"] for item in response.json()["items"]] == [value] * 3
    assert [await stored_seq(engine, "task", task_id) for task_id in ids] == [value] * 3

    await delete(client, f"labels/{label['id']}")  # re-stamps the three tasks that carried it
    value = await seq.took_next("delete label")
    assert (await stored_tombstones(engine))[("label", label["id"])] == value
    assert [await stored_seq(engine, "task", task_id) for task_id in ids] == [value] * 3

    moving = await create_list(client, "Moving")
    await seq.took_next("create list")
    kept = await create_task(client, title="kept", list_id=moving["id"])
    await seq.took_next("create task")
    await delete(client, f"lists/{moving['id']}", tasks="move", move_to=errands["id"])
    value = await seq.took_next("delete list moving its task")
    assert (await stored_tombstones(engine))[("list", moving["id"])] == value
    assert await stored_seq(engine, "task", kept["id"]) == value

    await delete(client, f"lists/{errands['id']}", tasks="delete")
    value = await seq.took_next("delete list with its 4 tasks")
    tombstones = await stored_tombstones(engine)
    gone = [("list", errands["id"]), *(("task", task_id) for task_id in [*ids, kept["id"]])]
    assert {key: tombstones[key] for key in gone} == dict.fromkeys(gone, value)


async def test_a_refused_write_takes_no_value(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    seq = ChangeCounter(engine)
    task = await create_task(client, title="first")
    tid = task["id"]
    label = await create_label(client, "Work")
    await create_label(client, "Home")
    await seq.start()

    stale = await client.patch(
        f"{API}/tasks/{tid}", json={"title": "x"}, headers={"If-Match": f'"{task["version"] + 1}"'}
    )
    assert_problem(stale, 412)
    await seq.took_none("PATCH with a stale If-Match")
    assert_problem(await client.patch(f"{API}/tasks/{uuid.uuid4()}", json={"title": "x"}), 404)
    await seq.took_none("PATCH of a missing task")
    assert_problem(await client.patch(f"{API}/tasks/{tid}", json={"title": ""}), 422)
    await seq.took_none("PATCH with an invalid body")
    assert_problem(await client.post(f"{API}/tasks", json={"title": 7}), 422)
    await seq.took_none("POST with an invalid body")
    assert_problem(
        await client.post(f"{API}/tasks", json={"title": "x", "list_id": str(uuid.uuid4())}), 404
    )
    await seq.took_none("POST into a missing list")
    bulk_missing = await client.post(
        f"{API}/tasks/bulk", json={"ids": [tid, str(uuid.uuid4())], "set": {"completed": True}}
    )
    assert_problem(bulk_missing, 404)
    await seq.took_none("bulk naming a missing task")
    assert_problem(await client.delete(f"{API}/tasks/{tid}", headers={"If-Match": '"9"'}), 412)
    await seq.took_none("DELETE with a stale If-Match")
    assert_problem(await client.delete(f"{API}/lists/inbox"), 409)
    await seq.took_none("deleting the inbox")
    assert_problem(await client.patch(f"{API}/labels/{label['id']}", json={"name": "home"}), 409)
    await seq.took_none("renaming a label to a taken name")
    assert await stored_seq(engine, "task", tid) == task["change_seq"]
    assert await stored_tombstones(engine) == {}

    await answered(seq, await client.patch(f"{API}/tasks/{tid}", json={"title": "2"}), "PATCH")


# --- 2. full sync --------------------------------------------------------------------------------


async def test_a_sync_without_token_sends_exactly_the_live_resources_in_feed_order(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    errands = await create_list(client, "Errands")
    gone_list = await create_list(client, "Gone")
    work = await create_label(client, "Work")
    gone_label = await create_label(client, "Gone")
    tasks = [
        await create_task(client, title="milk", list_id=errands["id"], label_ids=[work["id"]]),
        await create_task(client, title="call", priority="high", label_ids=[gone_label["id"]]),
        await create_task(client, title="done", completed=True, list_id=errands["id"]),
        await create_task(client, title="away", list_id=gone_list["id"]),
    ]
    await patch_task(client, tasks[0]["id"], description="2 litres")
    doomed = await create_task(client, title="doomed")
    await delete(client, f"tasks/{doomed['id']}")
    await delete(client, f"labels/{gone_label['id']}")
    await delete(client, f"lists/{gone_list['id']}", tasks="delete")
    await create_task(client, user="bob", title="not alice's")

    feed = await sync_to_end(client)

    [page] = feed.pages
    live = await live_state(client)
    assert not any(change["deleted"] for change in page)
    assert by_key(page).keys() == live.keys()
    assert {key: change["data"] for key, change in by_key(page).items()} == live
    assert ("list", str(inbox_id(USER))) in live
    assert len(live) == 3 + 2 + 1  # tasks; the inbox and Errands; Work
    assert page == sorted(page, key=feed_order)
    for change in page:
        assert await stored_seq(engine, change["kind"], change["id"]) == change["change_seq"]
    # Paged, it is the same feed.
    assert (await sync_to_end(client, limit=2)).changes == page
    # Up to date: nothing after its token.
    nothing = await sync(client, feed.token)
    assert (nothing["changes"], nothing["has_more"]) == ([], False)


# --- 3. delta ------------------------------------------------------------------------------------


async def test_a_delta_sends_each_changed_resource_once_with_its_latest_state(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    home = await create_list(client, "Home")
    label = await create_label(client, "Urgent")
    kept = await create_task(client, title="kept")
    updated = await create_task(client, title="updated")
    deleted = await create_task(client, title="deleted")
    carrier = await create_task(client, title="carrier", label_ids=[label["id"]])
    at_home = [await create_task(client, title=f"home {i}", list_id=home["id"]) for i in range(2)]
    token = (await sync_to_end(client)).token

    created = await create_task(client, title="created")
    await patch_task(client, updated["id"], title="once")
    await patch_task(client, updated["id"], title="twice", priority="low")
    await delete(client, f"tasks/{deleted['id']}")
    await delete(client, f"lists/{home['id']}", tasks="delete")
    await delete(client, f"labels/{label['id']}")
    ephemeral = await create_task(client, title="ephemeral")
    await delete(client, f"tasks/{ephemeral['id']}")

    page = await sync(client, token)

    assert page["has_more"] is False
    changes = page["changes"]
    found = by_key(changes)
    gone = {
        ("task", deleted["id"]),
        ("list", home["id"]),
        *(("task", task["id"]) for task in at_home),
        ("label", label["id"]),
        ("task", ephemeral["id"]),
    }
    live_changed = {("task", created["id"]), ("task", updated["id"]), ("task", carrier["id"])}
    assert found.keys() == gone | live_changed
    assert ("task", kept["id"]) not in found
    tombstones = await stored_tombstones(engine)
    for key in gone:
        assert (found[key]["deleted"], found[key]["data"]) == (True, None), key
        assert found[key]["change_seq"] == tombstones[key], key
    for kind, item_id in live_changed:
        assert found[(kind, item_id)]["deleted"] is False
        assert found[(kind, item_id)]["data"] == await get_json(client, f"{API}/tasks/{item_id}")
    assert found[("task", updated["id"])]["data"]["title"] == "twice"
    assert found[("task", carrier["id"])]["data"]["labels"] == []
    assert found[("task", carrier["id"])]["data"]["label_ids"] == []
    seqs = [change["change_seq"] for change in changes]
    assert seqs == sorted(seqs)  # oldest first
    assert max(seqs) == await user_seq(engine)

    again = await sync(client, page["next_token"])
    assert (again["changes"], again["has_more"]) == ([], False)


# --- 4. paging -----------------------------------------------------------------------------------


async def test_pages_of_two_follow_next_token_to_every_change_once_in_order(
    client: httpx.AsyncClient,
) -> None:
    first = await create_task(client, title="first")
    base = await sync_to_end(client)
    replica: State = {}
    apply(replica, base.changes)

    errands = await create_list(client, "Errands")
    label = await create_label(client, "Work")
    trio = [await create_task(client, title=f"t{i}", label_ids=[label["id"]]) for i in range(3)]
    bulk = await client.post(
        f"{API}/tasks/bulk",
        json={"ids": [task["id"] for task in trio], "set": {"list_id": errands["id"]}},
    )
    assert bulk.status_code == 200, bulk.text
    await delete(client, f"tasks/{first['id']}")
    await patch_task(client, trio[0]["id"], completed=True)
    await delete(client, f"labels/{label['id']}")  # three tasks re-stamped at once
    await create_task(client, title="last")

    whole = await sync(client, base.token, limit=1000)
    paged = await sync_to_end(client, base.token, limit=2)

    assert whole["has_more"] is False
    assert len(whole["changes"]) == 7  # Errands, the label, three tasks, first, last
    assert paged.changes == whole["changes"]
    assert all(len(page) <= 2 for page in paged.pages)
    assert len(paged.pages) >= 4
    by_key(paged.changes)  # each once
    seqs = [change["change_seq"] for change in paged.changes]
    assert seqs == sorted(seqs)
    apply(replica, paged.changes)
    assert_same_state(replica, await live_state(client))
    for token in (paged.token, whole["next_token"]):
        nothing = await sync(client, token)
        assert (nothing["changes"], nothing["has_more"]) == ([], False)


# --- 5. writes between pages ---------------------------------------------------------------------


@dataclass
class Workload:
    """Random writes of one user through HTTP, on the ids it knows of.

    `concurrent`: several writers share it, so an id may be gone by the time it is used (404
    is fine then); and only writes of one row each, so values in the feed never repeat."""

    client: httpx.AsyncClient
    rng: random.Random
    concurrent: bool = False
    tasks: dict[str, str] = field(default_factory=dict)  # id -> list id
    lists: list[str] = field(default_factory=list)  # besides the inbox
    labels: list[str] = field(default_factory=list)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    made: int = 0

    async def step(self) -> None:
        single = [
            self.create_task, self.create_task, self.patch_task, self.toggle_task,
            self.move_task, self.move_task, self.delete_task, self.create_list,
            self.rename_list, self.create_label,
        ]  # fmt: skip
        several = [self.bulk, self.bulk, self.bulk, self.delete_list, self.delete_label]
        if not self.concurrent and self.rng.random() < 0.15:
            await self.rng.choice(several)()
        else:
            await self.rng.choice(single)()

    def _name(self, prefix: str) -> str:
        self.made += 1
        return f"{prefix} {self.made}"

    def _task(self) -> str | None:
        return self.rng.choice(list(self.tasks)) if self.tasks else None

    def _list(self) -> str:
        return self.rng.choice(["inbox", *self.lists])

    def _check(self, what: str, response: httpx.Response, ok: int) -> bool:
        self.statuses[(what, response.status_code)] += 1
        if response.status_code == ok:
            return True
        allowed = {404} if self.concurrent else set()
        assert response.status_code in allowed, f"{what}: {response.status_code} {response.text}"
        return False

    async def create_task(self) -> None:
        labels = self.rng.sample(self.labels, min(len(self.labels), self.rng.randint(0, 2)))
        body = {"title": self._name("task"), "list_id": self._list(), "label_ids": labels}
        if self.rng.random() < 0.3:
            body["description"] = "with a description"
        response = await self.client.post(f"{API}/tasks", json=body)
        if self._check("create task", response, 201):
            self.tasks[response.json()["id"]] = response.json()["list_id"]

    async def patch_task(self) -> None:
        if (task_id := self._task()) is not None:
            body = {"title": self._name("renamed"), "priority": self.rng.choice(["low", "high"])}
            self._check(
                "patch task", await self.client.patch(f"{API}/tasks/{task_id}", json=body), 200
            )

    async def toggle_task(self) -> None:
        if (task_id := self._task()) is not None:
            response = await self.client.patch(f"{API}/tasks/{task_id}/complete")
            self._check("toggle task", response, 200)

    async def move_task(self) -> None:
        if (task_id := self._task()) is not None:
            target = self._list()
            response = await self.client.post(
                f"{API}/tasks/{task_id}/move", json={"list_id": target}
            )
            if self._check("move task", response, 200):
                self.tasks[task_id] = response.json()["list_id"]

    async def delete_task(self) -> None:
        if (task_id := self._task()) is not None:
            response = await self.client.delete(f"{API}/tasks/{task_id}")
            self.tasks.pop(task_id, None)
            self._check("delete task", response, 204)

    async def create_list(self) -> None:
        if len(self.lists) < 5:
            response = await self.client.post(f"{API}/lists", json={"name": self._name("list")})
            if self._check("create list", response, 201):
                self.lists.append(response.json()["id"])

    async def rename_list(self) -> None:
        list_id = self._list()
        response = await self.client.patch(
            f"{API}/lists/{list_id}", json={"name": self._name("list")}
        )
        self._check("rename list", response, 200)

    async def create_label(self) -> None:
        if len(self.labels) < 5:
            response = await self.client.post(f"{API}/labels", json={"name": self._name("label")})
            if self._check("create label", response, 201):
                self.labels.append(response.json()["id"])

    async def bulk(self) -> None:
        if len(self.tasks) >= 2:
            ids = self.rng.sample(list(self.tasks), 2)
            body = {"ids": ids, "set": {"completed": self.rng.random() < 0.5}}
            self._check("bulk", await self.client.post(f"{API}/tasks/bulk", json=body), 200)

    async def delete_list(self) -> None:
        if self.lists:
            list_id = self.lists.pop(self.rng.randrange(len(self.lists)))
            response = await self.client.delete(
                f"{API}/lists/{list_id}", params={"tasks": "delete"}
            )
            self._check("delete list", response, 204)
            self.tasks = {task: home for task, home in self.tasks.items() if home != list_id}

    async def delete_label(self) -> None:
        if self.labels:
            label_id = self.labels.pop(self.rng.randrange(len(self.labels)))
            self._check("delete label", await self.client.delete(f"{API}/labels/{label_id}"), 204)


async def test_a_client_applying_pages_while_writes_happen_between_them_ends_up_live(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    seed = 5
    workload = Workload(client, random.Random(seed))
    for _ in range(3):
        await workload.create_list()
        await workload.create_label()
    for _ in range(6):
        await workload.create_task()
    replica: State = {}
    token: str | None = None  # the first pages are a full sync, interrupted by writes

    newest = 0
    for _ in range(24):
        page = await sync(client, token, limit=2)
        apply(replica, page["changes"])
        newest = max([newest, *(change["change_seq"] for change in page["changes"])])
        token = page["next_token"]
        for _ in range(workload.rng.randint(0, 3)):
            await workload.step()
    rest = (await sync_to_end(client, token, limit=3)).changes
    apply(replica, rest)
    newest = max([newest, *(change["change_seq"] for change in rest)])

    live = await live_state(client)
    assert_same_state(replica, live)
    assert sum(kind == "task" for kind, _ in live) >= 5, (seed, workload.statuses)
    assert sum(n for (_, status), n in workload.statuses.items() if status < 300) >= 30
    assert newest == await user_seq(engine)  # the last write was seen


# --- 6. invalid tokens and limits ----------------------------------------------------------------


def edited(token: str) -> list[str]:
    middle = len(token) // 2
    flipped = "A" if token[middle] != "A" else "B"
    return [token[:middle] + flipped + token[middle + 1 :], token + "A", token[:-1], "garbage"]


async def test_an_edited_or_foreign_token_is_a_400_problem_and_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await create_task(client, title="mine")
    await create_task(client, user="bob", title="bob's")
    token = (await sync_to_end(client)).token
    bobs = (await sync(client, user="bob"))["next_token"]
    before = await everything_stored(engine)

    for bad in [*edited(token), bobs]:
        response = await sync_status(client, {"token": bad})
        body = assert_problem(response, 400)
        assert body["type"] == INVALID_TOKEN, body
        assert "token" in body["detail"].lower(), body

    assert await everything_stored(engine) == before
    assert (await sync(client, token))["changes"] == []  # the real one still works


async def test_limit_must_be_1_to_1000(client: httpx.AsyncClient) -> None:
    await create_task(client)
    for limit in ("0", "1001", "-1", "abc", "1.5", ""):
        body = assert_problem(await sync_status(client, {"limit": limit}), 422)
        assert "limit" in str(body), (limit, body)

    one = await sync(client, limit=1)
    assert len(one["changes"]) == 1 and one["has_more"] is True  # the inbox and the task
    assert len((await sync(client, limit=1000))["changes"]) == 2


# --- 7. purged tombstones: 410 -------------------------------------------------------------------


async def test_a_token_older_than_a_purged_tombstone_is_410_and_a_new_one_works(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    doomed = await create_task(client, title="doomed")
    await create_task(client, title="stays")
    before_delete = (await sync_to_end(client)).token
    await delete(client, f"tasks/{doomed['id']}")
    bobs = await create_task(client, user="bob", title="bob's")
    assert (await client.delete(f"/api/bob/tasks/{bobs['id']}")).status_code == 204
    seen_delete = (await sync_to_end(client, before_delete)).token
    tombstone = (await stored_tombstones(engine))[("task", doomed["id"])]
    db = app_of(client).state.database

    assert await purge_tombstones(db, older_than=datetime.now(UTC) - timedelta(hours=1)) == 0
    assert await count(engine, "tombstones") == 2
    assert (await sync(client, before_delete))["changes"][0]["deleted"] is True

    purged = await purge_tombstones(db, older_than=datetime.now(UTC) + timedelta(seconds=1))

    assert purged == 2
    assert await count(engine, "tombstones") == 0
    assert (await user_counters(engine))[1] == tombstone
    assert (await user_counters(engine, "bob"))[1] == await user_seq(engine, "bob")
    expired = await sync_status(client, {"token": before_delete})
    body = assert_problem(expired, 410)
    assert body["type"] == TOKEN_EXPIRED, body
    # A token that already has the purged deletion needs nothing that is gone.
    assert (await sync(client, seen_delete))["changes"] == []
    # Starting again works, and so does its token.
    fresh = await sync_to_end(client)
    assert {data["id"] for data in (await live_state(client)).values()} == {
        change["id"] for change in fresh.changes
    }
    created = await create_task(client, title="new")
    after = await sync(client, fresh.token)
    assert [change["data"] for change in after["changes"]] == [created]


# --- 8. tombstones are not rows ------------------------------------------------------------------


async def test_reads_and_counts_ignore_tombstones(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    errands = await create_list(client, "Errands")
    tasks = [await create_task(client, title=f"t{i}", list_id=errands["id"]) for i in range(3)]
    for task in tasks[:2]:
        await delete(client, f"tasks/{task['id']}")

    assert len(await stored_tombstones(engine)) == 2
    listing = await get_json(client, f"{API}/tasks", include_total="true")
    assert ([task["id"] for task in listing["items"]], listing["total"]) == ([tasks[2]["id"]], 1)
    assert (await get_json(client, f"{API}/tasks/stats"))["total"] == 1
    assert (await get_json(client, f"{API}/lists/{errands['id']}"))["task_count"] == 1
    assert_problem(await client.get(f"{API}/tasks/{tasks[0]['id']}"), 404)


async def test_deleted_tasks_do_not_count_against_the_quota(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running(settings.model_copy(update={"quota_tasks_per_user": 3})) as client:
        first = [await create_task(client, title=f"a{i}") for i in range(3)]
        for task in first:
            await delete(client, f"tasks/{task['id']}")
        for i in range(3):
            await create_task(client, title=f"b{i}")
        seq = await user_seq(engine)

        refused = await client.post(f"{API}/tasks", json={"title": "one too many"})

        assert_problem(refused, 403)
        assert await user_seq(engine) == seq  # a refused write takes no value
        assert len(await stored_tombstones(engine)) == 3


# --- 9. concurrency (PostgreSQL) -----------------------------------------------------------------

# Overrides the `backend` fixture's parameters: these run on PostgreSQL only.
ONLY_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"])
WRITERS = 8
STEPS_PER_WRITER = 25


def assert_strictly_increasing(changes: list[Change], after: int) -> int:
    """Each value is one transaction of one row here, so values never repeat."""
    seqs = [change["change_seq"] for change in changes]
    assert seqs == sorted(set(seqs)), seqs
    assert not seqs or seqs[0] > after, (after, seqs)
    return seqs[-1] if seqs else after


@ONLY_POSTGRESQL  # SQLite has one writer at a time: nothing runs concurrently there
async def test_concurrent_writers_and_a_syncing_client_agree_with_the_live_state(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    seed = 20261202
    setup = Workload(client, random.Random(seed), concurrent=True)
    for _ in range(3):
        await setup.create_list()
        await setup.create_label()
    for _ in range(10):
        await setup.create_task()
    replica: State = {}
    base = await sync_to_end(client)
    apply(replica, base.changes)
    last_seen = max(change["change_seq"] for change in base.changes)
    stop = asyncio.Event()
    reader = random.Random(seed - 1)
    pages = 0

    async def writer(number: int) -> Counter[tuple[str, int]]:
        workload = Workload(
            client, random.Random(seed + number), True, setup.tasks, setup.lists, setup.labels
        )
        workload.made = number * 1_000_000
        for _ in range(STEPS_PER_WRITER):
            await workload.step()
        return workload.statuses

    async def syncer(token: str) -> str:
        nonlocal last_seen, pages
        while True:
            done = stop.is_set()
            page = await sync(client, token, limit=reader.choice([1, 3, 20, 500]))
            pages += 1
            last_seen = assert_strictly_increasing(page["changes"], last_seen)
            apply(replica, page["changes"])
            token = page["next_token"]
            if done and not page["has_more"]:
                return token
            if not page["has_more"]:
                await asyncio.sleep(0.002)

    reading = asyncio.create_task(syncer(base.token))
    results = await asyncio.gather(*(writer(number) for number in range(WRITERS)))
    stop.set()
    token = await reading

    statuses = sum(results, Counter[tuple[str, int]]())
    final = await sync(client, token)
    assert (final["changes"], final["has_more"]) == ([], False)
    assert_same_state(replica, await live_state(client))
    assert last_seen == await user_seq(engine), statuses
    # Enough happened for the above to mean something: most steps were writes that took
    # effect (a delete or move may meet a task another writer deleted: 404).
    successes = sum(n for (_, status), n in statuses.items() if status < 300)
    assert successes >= WRITERS * STEPS_PER_WRITER * 3 // 4, statuses
    assert pages >= 10, pages


@ONLY_POSTGRESQL
async def test_fifty_concurrent_creates_take_fifty_consecutive_values(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await create_task(client, title="seed")
    start = await user_seq(engine)
    token = (await sync_to_end(client)).token

    responses = await asyncio.gather(
        *(client.post(f"{API}/tasks", json={"title": f"task {i}"}) for i in range(50))
    )

    assert [response.status_code for response in responses] == [201] * 50
    created = {response.json()["id"]: response.json()["change_seq"] for response in responses}
    assert sorted(created.values()) == list(range(start + 1, start + 51))
    assert await user_seq(engine) == start + 50
    for task_id, value in created.items():
        assert await stored_seq(engine, "task", task_id) == value
    feed = await sync_to_end(client, token)
    assert [change["id"] for change in feed.changes] == sorted(created, key=created.__getitem__)
    assert [change["change_seq"] for change in feed.changes] == list(range(start + 1, start + 51))
    live = await live_state(client)
    assert all(change["data"] == live[("task", change["id"])] for change in feed.changes)
