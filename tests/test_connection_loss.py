"""After the server drops every connection, the very next request of each kind still succeeds.

`pg_terminate_backend` on every backend of the app's database is what a Neon compute suspending
or a pooler restarting does to the app. Specified here, on PostgreSQL directly and through
PgBouncer (transaction mode, TLS): with several pooled connections dead, the first request of
each kind (list, get, create, keyed create, PUT, PATCH, If-Match PATCH, toggle, delete, stats,
bulk delete, readiness) answers its normal 2xx at its first attempt, never a 503, and the
database then holds exactly what that one request should have left there (a toggle flipped
once, a create written once).

The request goes out as soon as the terminating statement has returned, while the backends are
still exiting: it may meet a connection whose server has said goodbye (FATAL 57P01) but whose
socket is not closed yet, one the server kills under it, or (through PgBouncer, whose server
connections die while the app's connections to it stay open) a server connection PgBouncer
takes up as it dies. Which one is a race, so each case runs ROUNDS times, each must succeed.
Through PgBouncer the same is specified after the app's connections sat idle (two requests in
a row), and for a burst of concurrent mixed requests on both backends.

The app is reached only over HTTP; the database is read with admin SQL through asyncpg.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from support import admin_dsn, backends_of, running, settings_for, terminate_backends
from todo_api.settings import Settings

pytestmark = pytest.mark.through_pooler
POSTGRES_BACKENDS = pytest.mark.parametrize("backend", ["postgresql", "pgbouncer"], indirect=True)
# Kill and request race (see the module docstring): a failure must not hide behind luck.
ROUNDS = 5
# Concurrent requests before the kill, so that several pooled connections are open (and die).
WARM_CONNECTIONS = 8


# --- helpers -------------------------------------------------------------------------------------


def database_name(database_url: str) -> str:
    name = make_url(database_url).database
    assert name, database_url
    return name


async def kill_every_backend(database: str) -> None:
    killed = await terminate_backends(database)
    assert killed >= 2, f"only {killed} backend(s) to terminate: the pool was not warm"


async def warm_pool(client: httpx.AsyncClient, user: str, connections: int, database: str) -> None:
    """Concurrent reads, until the database has several server connections to kill.

    Through PgBouncer, reads that happen not to overlap (a busy machine) share one server
    connection; another burst then opens more, as the app's pool does under real load.
    """
    for _ in range(10):
        responses = await asyncio.gather(
            *(client.get(f"/api/{user}/tasks") for _ in range(connections))
        )
        assert [response.status_code for response in responses] == [200] * connections
        if await backends_of(database) >= 2:
            return
    raise AssertionError(f"10 bursts of {connections} reads left fewer than 2 server connections")


class Row(NamedTuple):
    title: str
    description: str | None
    completed: bool
    version: int


Rows = dict[str, Row]  # by task id


async def stored_rows(database: str, user: str) -> Rows:
    """The user's tasks as PostgreSQL holds them."""
    admin = await asyncpg.connect(admin_dsn(database))
    try:
        records = await admin.fetch(
            "SELECT id, title, description, completed, version FROM tasks WHERE user_id = $1",
            user,
        )
    finally:
        await admin.close()
    return {
        str(record["id"]): Row(
            record["title"], record["description"], record["completed"], record["version"]
        )
        for record in records
    }


async def stored_idempotency_keys(database: str, user: str, key: str) -> int:
    admin = await asyncpg.connect(admin_dsn(database))
    try:
        count = await admin.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE user_id = $1 AND key = $2", user, key
        )
    finally:
        await admin.close()
    return int(count)


def exception_chain(error: BaseException) -> list[str]:
    """`module.Class (sqlstate …): first line of the message`, for the error and its causes."""
    chain: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = type(current)
        message = (str(current).strip().splitlines() or [""])[0]
        sqlstate = getattr(current, "sqlstate", None)
        chain.append(f"{kind.__module__}.{kind.__qualname__} (sqlstate {sqlstate}): {message}")
        current = current.__cause__ or current.__context__
    return chain


def app_log(caplog: pytest.LogCaptureFixture) -> str:
    """The app's warnings and errors since the kill, each with its exception chain."""
    lines = []
    for record in caplog.records:
        if record.levelno < logging.WARNING:
            continue
        lines.append(f"  {record.levelname} {record.name}: {record.getMessage()}")
        if record.exc_info and record.exc_info[1] is not None:
            lines.extend(f"      {link}" for link in exception_chain(record.exc_info[1]))
    return "\n".join(lines) or "  (nothing logged)"


def answer(response: httpx.Response) -> str:
    request = response.request
    query = f"?{request.url.query.decode()}" if request.url.query else ""
    return (
        f"{request.method} {request.url.path}{query} answered {response.status_code}: "
        f"{response.text[:400]}"
    )


def explain(responses: list[httpx.Response], caplog: pytest.LogCaptureFixture, when: str) -> str:
    answers = "\n".join(answer(response) for response in responses)
    return f"{when}:\n{answers}\napp log:\n{app_log(caplog)}"


def assert_answered(
    response: httpx.Response, status: int, caplog: pytest.LogCaptureFixture, when: str
) -> None:
    assert response.status_code != 503, explain([response], caplog, when)
    assert response.status_code == status, explain([response], caplog, when)


# --- the scene each request meets -----------------------------------------------------------------


@dataclass
class Scene:
    """Three tasks of `user` made before the kill: `first` and `third` pending, `second` done."""

    user: str
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)
    baseline: Rows = field(default_factory=dict)
    key: str = field(default_factory=lambda: f"key-{uuid.uuid4().hex}")

    @property
    def collection(self) -> str:
        return f"/api/{self.user}/tasks"

    def id(self, label: str) -> str:
        task_id: str = self.tasks[label]["id"]
        return task_id

    def url(self, label: str = "first", suffix: str = "") -> str:
        return f"{self.collection}/{self.id(label)}{suffix}"


async def set_scene(client: httpx.AsyncClient, database: str, user: str) -> Scene:
    scene = Scene(user)
    for label, completed in (("first", False), ("second", True), ("third", False)):
        response = await client.post(
            scene.collection, json={"title": label, "completed": completed}
        )
        assert response.status_code == 201, response.text
        scene.tasks[label] = response.json()
        scene.etags[label] = response.headers["ETag"]
    scene.baseline = await stored_rows(database, user)
    return scene


@dataclass(frozen=True)
class Operation:
    """One kind of request: how to send it, its status, what its body and the database hold."""

    name: str
    send: Callable[[httpx.AsyncClient, Scene], Awaitable[httpx.Response]]
    status: int
    body: Callable[[httpx.Response, Scene], None]
    expected: Callable[[httpx.Response, Scene], Rows]  # the user's tasks afterwards
    read_back: Callable[[httpx.AsyncClient, Scene], Awaitable[None]] | None = None
    writes_a_key: bool = False


# What the database holds afterwards.


def unchanged(_response: httpx.Response, scene: Scene) -> Rows:
    return dict(scene.baseline)


def with_new_task(title: str) -> Callable[[httpx.Response, Scene], Rows]:
    def expected(response: httpx.Response, scene: Scene) -> Rows:
        return scene.baseline | {response.json()["id"]: Row(title, None, False, 1)}

    return expected


def with_first(**changes: Any) -> Callable[[httpx.Response, Scene], Rows]:
    def expected(_response: httpx.Response, scene: Scene) -> Rows:
        first = scene.id("first")
        return scene.baseline | {first: scene.baseline[first]._replace(**changes)}

    return expected


def without(label: str) -> Callable[[httpx.Response, Scene], Rows]:
    def expected(_response: httpx.Response, scene: Scene) -> Rows:
        return {key: row for key, row in scene.baseline.items() if key != scene.id(label)}

    return expected


# What the answer says.


def lists_every_task(response: httpx.Response, _scene: Scene) -> None:
    titles = sorted(task["title"] for task in response.json()["items"])
    assert titles == ["first", "second", "third"], response.json()


def is_first(response: httpx.Response, scene: Scene) -> None:
    body = response.json()
    assert (body["id"], body["title"], body["version"]) == (scene.id("first"), "first", 1)
    assert response.headers["ETag"] == '"1"'


def is_new(title: str) -> Callable[[httpx.Response, Scene], None]:
    def check(response: httpx.Response, _scene: Scene) -> None:
        body = response.json()
        assert (body["title"], body["version"], body["completed"]) == (title, 1, False), body
        assert "Idempotent-Replayed" not in response.headers

    return check


def is_first_at_version_2(**fields: Any) -> Callable[[httpx.Response, Scene], None]:
    def check(response: httpx.Response, scene: Scene) -> None:
        body = response.json()
        assert (body["id"], body["version"]) == (scene.id("first"), 2), body
        assert {name: body[name] for name in fields} == fields, body
        assert response.headers["ETag"] == '"2"'

    return check


def is_empty(response: httpx.Response, _scene: Scene) -> None:
    assert response.content == b""


def equals(expected: dict[str, Any]) -> Callable[[httpx.Response, Scene], None]:
    def check(response: httpx.Response, _scene: Scene) -> None:
        assert response.json() == expected

    return check


def is_ready(response: httpx.Response, _scene: Scene) -> None:
    body = response.json()
    assert (body["status"], body["database"]["dialect"]) == ("ok", "postgresql"), body


async def first_flipped_once(client: httpx.AsyncClient, scene: Scene) -> None:
    stored = (await client.get(scene.url())).json()
    assert (stored["completed"], stored["version"]) == (True, 2), stored


# The requests.


async def send_list(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    return await client.get(scene.collection)


async def send_get(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    return await client.get(scene.url())


async def send_create(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    return await client.post(scene.collection, json={"title": "created"})


async def send_keyed_create(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    return await client.post(
        scene.collection, json={"title": "created once"}, headers={"Idempotency-Key": scene.key}
    )


async def send_put(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    replacement = {"title": "replaced", "description": "whole", "completed": True}
    return await client.put(scene.url(), json=replacement)


async def send_patch(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    return await client.patch(scene.url(), json={"title": "patched"})


async def send_if_match_patch(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    return await client.patch(
        scene.url(), json={"description": "guarded"}, headers={"If-Match": scene.etags["first"]}
    )


async def send_toggle(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    return await client.patch(scene.url(suffix="/complete"))


async def send_delete(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    return await client.delete(scene.url())


async def send_stats(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    return await client.get(f"{scene.collection}/stats")


async def send_bulk_delete(client: httpx.AsyncClient, scene: Scene) -> httpx.Response:
    return await client.delete(scene.collection, params={"completed": "true"})


async def send_ready(client: httpx.AsyncClient, _scene: Scene) -> httpx.Response:
    return await client.get("/health/ready")


OPERATIONS = [
    Operation("list_shows_every_task", send_list, 200, lists_every_task, unchanged),
    Operation("get_returns_the_task", send_get, 200, is_first, unchanged),
    Operation(
        "create_writes_one_task", send_create, 201, is_new("created"), with_new_task("created")
    ),
    Operation(
        "keyed_create_writes_one_task_and_one_key",
        send_keyed_create,
        201,
        is_new("created once"),
        with_new_task("created once"),
        writes_a_key=True,
    ),
    Operation(
        "put_replaces_the_task",
        send_put,
        200,
        is_first_at_version_2(title="replaced", description="whole", completed=True),
        with_first(title="replaced", description="whole", completed=True, version=2),
    ),
    Operation(
        "patch_changes_the_task",
        send_patch,
        200,
        is_first_at_version_2(title="patched"),
        with_first(title="patched", version=2),
    ),
    Operation(
        "if_match_patch_with_the_current_etag_changes_the_task",
        send_if_match_patch,
        200,
        is_first_at_version_2(description="guarded"),
        with_first(description="guarded", version=2),
    ),
    Operation(
        "toggle_flips_once",
        send_toggle,
        200,
        is_first_at_version_2(completed=True),
        with_first(completed=True, version=2),
        read_back=first_flipped_once,
    ),
    Operation("delete_removes_the_task", send_delete, 204, is_empty, without("first")),
    Operation(
        "stats_count_every_task",
        send_stats,
        200,
        equals({"total": 3, "completed": 1, "pending": 2, "overdue": 0, "due_today": 0}),
        unchanged,
    ),
    Operation(
        "bulk_delete_removes_the_completed_task",
        send_bulk_delete,
        200,
        equals({"deleted": 1}),
        without("second"),
    ),
    Operation("readiness_reports_ready", send_ready, 200, is_ready, unchanged),
]
BY_OPERATION = pytest.mark.parametrize(
    "operation", OPERATIONS, ids=[operation.name for operation in OPERATIONS]
)


async def assert_outcome(
    operation: Operation,
    response: httpx.Response,
    scene: Scene,
    database: str,
    caplog: pytest.LogCaptureFixture,
    when: str,
    *,
    also: Callable[[Rows], Rows] = lambda rows: rows,
) -> None:
    """The answer is the operation's own, and the database holds exactly what it should (with
    `also` applied, for a request that followed)."""
    assert_answered(response, operation.status, caplog, when)
    operation.body(response, scene)
    assert await stored_rows(database, scene.user) == also(operation.expected(response, scene))
    if operation.writes_a_key:
        assert await stored_idempotency_keys(database, scene.user, scene.key) == 1


# --- the first request after the kill ------------------------------------------------------------


@POSTGRES_BACKENDS
@BY_OPERATION
async def test_the_first_request_after_every_backend_was_terminated_succeeds(
    operation: Operation,
    client: httpx.AsyncClient,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = database_name(database_url)
    for round_number in range(1, ROUNDS + 1):
        scene = await set_scene(client, database, f"alice-{round_number}")
        await warm_pool(client, scene.user, WARM_CONNECTIONS, database)
        await kill_every_backend(database)
        caplog.clear()

        response = await operation.send(client, scene)

        when = f"round {round_number} of {ROUNDS}, the first request after the kill"
        await assert_outcome(operation, response, scene, database, caplog, when)
        if operation.read_back is not None:
            await operation.read_back(client, scene)


# --- through PgBouncer, after the app's connections sat idle -------------------------------------


def pooler_settings(database_url: str) -> Settings:
    """Transaction-mode pooler settings, as the app meets Neon's `-pooler` endpoints."""
    return settings_for(database_url, db_pool_mode="transaction")


@pytest.fixture
async def idle_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running(pooler_settings(database_url)) as http:
        yield http


def third_flipped(scene: Scene) -> Callable[[Rows], Rows]:
    def apply(rows: Rows) -> Rows:
        third = scene.id("third")
        return rows | {third: scene.baseline[third]._replace(completed=True, version=2)}

    return apply


@pytest.mark.parametrize("backend", ["pgbouncer"], indirect=True)
@BY_OPERATION
async def test_two_requests_in_a_row_after_pgbouncers_server_connections_died_idle_succeed(
    operation: Operation,
    idle_client: httpx.AsyncClient,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # PgBouncer's server connections die while the app's connections to PgBouncer sit idle
    # for half a second; then the operation, and a toggle right after it (on
    # another pooled connection), each succeed at their first attempt.
    client = idle_client
    database = database_name(database_url)
    scene = await set_scene(client, database, "alice")
    await warm_pool(client, scene.user, WARM_CONNECTIONS, database)
    await kill_every_backend(database)
    await asyncio.sleep(0.5)
    caplog.clear()

    first = await operation.send(client, scene)
    second = await client.patch(scene.url("third", "/complete"))

    assert_answered(first, operation.status, caplog, "the first request after the idle kill")
    assert_answered(second, 200, caplog, "the second request after the idle kill")
    assert (second.json()["completed"], second.json()["version"]) == (True, 2)
    await assert_outcome(
        operation, first, scene, database, caplog, "after both", also=third_flipped(scene)
    )
    if operation.read_back is not None:
        await operation.read_back(client, scene)


# --- a burst after the kill ----------------------------------------------------------------------


@POSTGRES_BACKENDS
async def test_twenty_concurrent_mixed_requests_after_every_backend_was_terminated_all_succeed(
    client: httpx.AsyncClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = database_name(database_url)
    user = "alice"
    tasks = f"/api/{user}/tasks"
    made = [(await client.post(tasks, json={"title": f"task {i}"})).json() for i in range(10)]
    toggled, patched, deleted, read = made[:4], made[4:7], made[7:9], made[9]
    await warm_pool(client, user, 12, database)
    await kill_every_backend(database)
    caplog.clear()

    renamed = {"title": "patched"}
    requests: list[tuple[int, Awaitable[httpx.Response]]] = [
        *((200, client.patch(f"{tasks}/{task['id']}/complete")) for task in toggled),
        *((200, client.patch(f"{tasks}/{task['id']}", json=renamed)) for task in patched),
        *((204, client.delete(f"{tasks}/{task['id']}")) for task in deleted),
        *((201, client.post(tasks, json={"title": f"new {i}"})) for i in range(3)),
        *((200, client.get(f"{tasks}/{read['id']}")) for _ in range(2)),
        *((200, client.get(tasks)) for _ in range(3)),
        *((200, client.get(f"{tasks}/stats")) for _ in range(2)),
        (200, client.get("/health/ready")),
    ]
    assert len(requests) == 20
    responses = await asyncio.gather(*(request for _, request in requests))

    statuses = [status for status, _ in requests]
    unavailable = [response for response in responses if response.status_code == 503]
    wrong = [r for r, s in zip(responses, statuses, strict=True) if r.status_code != s]
    assert not unavailable, explain(unavailable, caplog, "the burst after the kill")
    assert not wrong, explain(wrong, caplog, "the burst after the kill")
    created = [response.json()["id"] for response in responses[9:12]]
    expected = {task["id"]: Row(task["title"], None, False, 1) for task in made}
    expected |= {task["id"]: Row(task["title"], None, True, 2) for task in toggled}
    expected |= {task["id"]: Row("patched", None, False, 2) for task in patched}
    for task in deleted:
        del expected[task["id"]]
    expected |= {task_id: Row(f"new {i}", None, False, 1) for i, task_id in enumerate(created)}
    assert await stored_rows(database, user) == expected
