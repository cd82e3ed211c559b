"""Round trips between the app and its database, pinned per request.

Each request is latency paid to the database per round trip (on Neon, a network hop each), so
its count is specified. Every request is a known number of statements: one for get, list,
stats, create, a create with an Idempotency-Key, PUT, PATCH, If-Match PATCH with the current
ETag, toggle, delete and bulk delete; two for a list with `include_total` and for an If-Match
PATCH with a stale ETag (412: the UPDATE, then the read of the current version). Nothing else is
sent: no ping before use, however long the connection sat idle, no BEGIN/COMMIT around a single
statement, no reset when it goes back to the pool.

Each statement costs one round trip on PostgreSQL directly, where asyncpg prepares it once per
connection and then only binds and executes it; and two through PgBouncer in transaction mode
(TLS, Neon's URL parameters), where a prepared statement cannot be kept: asyncpg sends an
unnamed Parse + Describe, waits for the parameter types, then Bind + Execute. That second trip
is asyncpg's floor (docs/decisions/0002-postgresql-driver.md measures psycopg 3, which needs
one, against it). Both hold steady (the connection was just used) and after it sat idle.

A counting proxy (round_trip_proxy) sits in front of the server the app connects to: PostgreSQL,
or PgBouncer, whose own hop to PostgreSQL is not counted. The same request is rehearsed once
first (on another user's tasks, in the same situation), so the pooled connection is warm (open,
its statements prepared where the driver may cache them); then the counter is reset and the
request made. The figure holds only that request's round trips: a connection's startup shows
up only if the request had to open one, and the failure message says so.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from round_trip_proxy import Measurement, ThreadedRoundTripProxy
from support import running, settings_for
from todo_api.settings import Settings

pytestmark = pytest.mark.through_pooler

IDLE_FOR = 0.5  # how long the connection sits idle in the `after_idle` situation
SETTLE = 0.05  # after the answer, for any traffic the request still causes (a check-in reset)


@dataclass
class Scene:
    """A user's tasks, made before the counter is reset."""

    user: str
    pending: dict[str, Any]
    etag: str  # of `pending`, as created

    @property
    def tasks(self) -> str:
        return f"/api/{self.user}/tasks"

    @property
    def url(self) -> str:
        return f"{self.tasks}/{self.pending['id']}"


async def set_scene(client: httpx.AsyncClient, user: str) -> Scene:
    tasks = f"/api/{user}/tasks"
    created = await client.post(tasks, json={"title": "pending"})
    done = await client.post(tasks, json={"title": "done", "completed": True})
    assert (created.status_code, done.status_code) == (201, 201), created.text + done.text
    return Scene(user, created.json(), created.headers["ETag"])


# Round trips per statement: prepared once per connection, or prepared unnamed every time.
TRIPS_PER_STATEMENT = {"postgresql": 1, "pgbouncer": 2}


@dataclass(frozen=True)
class Case:
    """One kind of request, its answer, and the statements it sends."""

    name: str
    send: Callable[[httpx.AsyncClient, Scene], Awaitable[httpx.Response]]
    status: int
    statements: int
    # BEGIN and COMMIT around them, each one round trip (simple queries) on every backend.
    in_transaction: bool = False

    @property
    def id(self) -> str:
        return f"{self.name}_{self.statements}_statement{'s' if self.statements > 1 else ''}"


CASES = [
    Case("get", lambda client, scene: client.get(scene.url), 200, 1),
    Case("list", lambda client, scene: client.get(scene.tasks), 200, 1),
    Case(
        "list_with_total",
        lambda client, scene: client.get(scene.tasks, params={"include_total": "true"}),
        200,
        2,
    ),
    # The user's zone first: "overdue" and "due today" are computed from it in Python.
    Case("stats", lambda client, scene: client.get(f"{scene.tasks}/stats"), 200, 2),
    Case(
        "list_due_today",
        lambda client, scene: client.get(scene.tasks, params={"due": "today"}),
        200,
        2,
    ),
    Case(
        "list_due_today_in_a_given_zone",
        lambda client, scene: client.get(scene.tasks, params={"due": "today", "tz": "Asia/Tokyo"}),
        200,
        1,
    ),
    Case("create", lambda client, scene: client.post(scene.tasks, json={"title": "new"}), 201, 1),
    Case(
        "keyed_create",
        lambda client, scene: client.post(
            scene.tasks, json={"title": "once"}, headers={"Idempotency-Key": uuid.uuid4().hex}
        ),
        201,
        1,
    ),
    # A full replacement also replaces the labels: a transaction of two statements.
    Case(
        "put",
        lambda client, scene: client.put(scene.url, json={"title": "whole", "completed": True}),
        200,
        2,
        in_transaction=True,
    ),
    Case("patch", lambda client, scene: client.patch(scene.url, json={"title": "part"}), 200, 1),
    Case(
        "if_match_patch",
        lambda client, scene: client.patch(
            scene.url, json={"title": "guarded"}, headers={"If-Match": scene.etag}
        ),
        200,
        1,
    ),
    Case(
        "stale_if_match_patch",
        lambda client, scene: client.patch(
            scene.url, json={"title": "late"}, headers={"If-Match": '"7"'}
        ),
        412,
        2,
    ),
    Case("toggle", lambda client, scene: client.patch(f"{scene.url}/complete"), 200, 1),
    Case("delete", lambda client, scene: client.delete(scene.url), 204, 1),
    Case(
        "bulk_delete",
        lambda client, scene: client.delete(scene.tasks, params={"completed": "true"}),
        200,
        1,
    ),
]


@pytest.fixture
def proxy(database_url: str) -> Iterator[ThreadedRoundTripProxy]:
    """The counting proxy in front of the server at `database_url` (PostgreSQL or PgBouncer)."""
    target = make_url(database_url)
    with ThreadedRoundTripProxy(target.host or "127.0.0.1", target.port or 5432) as counting:
        yield counting


def proxied_settings(
    database_url: str, backend: str, situation: str, proxy: ThreadedRoundTripProxy
) -> Settings:
    url = make_url(database_url).set(host="127.0.0.1", port=proxy.port)  # query kept (pooler)
    overrides: dict[str, Any] = {}
    if backend == "pgbouncer":
        overrides["db_pool_mode"] = "transaction"
    return settings_for(url.render_as_string(hide_password=False), **overrides)


@pytest.fixture
async def proxied_client(
    database_url: str, backend: str, situation: str, proxy: ThreadedRoundTripProxy
) -> AsyncIterator[httpx.AsyncClient]:
    """The app, connecting to its database through the counting proxy."""
    async with running(proxied_settings(database_url, backend, situation, proxy)) as http:
        yield http


def explain(case: Case, measured: Measurement, response: httpx.Response, trips: int) -> str:
    note = ""
    if measured.new_connections:
        note = " (includes the startup of a connection the request opened)"
    return (
        f"{case.name}: {measured.round_trips} round trip(s){note}, the spec says {trips} "
        f"({case.statements} statement(s))\n{measured.describe()}\n"
        f"answer: {response.status_code} {response.text[:200]}"
    )


@pytest.mark.parametrize("situation", ["steady", "after_idle"])
@pytest.mark.parametrize("backend", ["postgresql", "pgbouncer"], indirect=True)
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_a_request_costs_the_round_trips_of_its_statements_and_no_more(
    case: Case,
    situation: str,
    backend: str,
    proxied_client: httpx.AsyncClient,
    proxy: ThreadedRoundTripProxy,
) -> None:
    client = proxied_client
    # The same request once before, on another user's tasks, in the same situation: the
    # connection has then prepared (and may cache) every statement the request needs.
    rehearsal, scene = await set_scene(client, "rehearsal"), await set_scene(client, "alice")
    for current in (rehearsal, scene):
        if situation == "after_idle":
            await asyncio.sleep(IDLE_FOR)
        proxy.reset()
        response = await case.send(client, current)
        await asyncio.sleep(SETTLE)
        measured = proxy.measure()
        assert response.status_code == case.status, response.text

    trips = case.statements * TRIPS_PER_STATEMENT[backend] + (2 if case.in_transaction else 0)
    assert measured.round_trips == trips, explain(case, measured, response, trips)


@pytest.mark.parametrize("backend", ["postgresql", "pgbouncer"], indirect=True)
async def test_the_first_if_match_write_on_a_connection_costs_no_type_lookup(
    database_url: str, backend: str, proxy: ThreadedRoundTripProxy
) -> None:
    # With an int[] parameter, asyncpg would first look the array type up on each new
    # connection (8 round trips, measured); the versions travel as text instead. One pooled
    # connection, never used for an If-Match write before: preparing the statement is allowed
    # (1 more round trip where statements are cached), nothing else.
    settings = proxied_settings(database_url, backend, "steady", proxy)
    async with running(settings.model_copy(update={"db_pool_size": 1})) as client:
        scene = await set_scene(client, "alice")
        proxy.reset()
        response = await client.patch(
            scene.url, json={"title": "guarded"}, headers={"If-Match": scene.etag}
        )
        await asyncio.sleep(SETTLE)
        measured = proxy.measure()
    assert response.status_code == 200, response.text
    assert measured.round_trips == 2, measured.describe()
