"""Server-sent events (`GET /api/{user_id}/events`): each committed change of a user reaches that
user's open streams, on every API process of the same PostgreSQL database, within a second.

Real `todo-api serve` processes and real streams read line by line over HTTP (httpx's ASGI
transport buffers whole responses, so it cannot test a stream). Two processes share one
PostgreSQL database: requests go through a real PgBouncer in transaction mode (`DATABASE_URL`),
each process's LISTEN connection straight to PostgreSQL (`DATABASE_URL_DIRECT`). A headless
Chromium page on another origin uses an `EventSource` with a ticket. On SQLite, one process
fans changes out in process. Nothing is mocked; `.ci/run` installs PostgreSQL, PgBouncer and
Chromium, and in CI a missing one fails these tests instead of skipping them.

The processes are shared by the module's tests (starting them is most of the time): every test
uses users of its own, and at most EVENTS_MAX_STREAMS_PER_USER (2) streams per user and process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from sqlalchemy.engine import make_url

from support import CHROMIUM_FLAGS, Server, admin_dsn, assert_problem, served
from todo_api.tables.changes import CHANNEL

SECRET = "events-stream-secret-" + "0123456789abcdef" * 2
LISTENER = "todo-api-listener"  # application_name of each process's LISTEN connection
MAX_STREAMS = 2
SHUTDOWN_TIMEOUT = 5
# Within this of a write's response its `changed` event must have arrived.
DELIVERY = 1.0

COMMON_ENV = {
    "EVENTS_MAX_STREAMS_PER_USER": str(MAX_STREAMS),
    "EVENTS_LISTENER_IDLE_SECONDS": "1",
    "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
    "DB_POOL_SIZE": "5",
    "ACCESS_LOG": "false",
}
JWT_ENV = {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": SECRET}


# --- users and tokens ------------------------------------------------------------------------


def new_user(name: str) -> str:
    """A user id no other test uses (the database is shared by the module's tests)."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


def bearer(user: str) -> dict[str, str]:
    now = int(time.time())
    token = jwt.encode({"sub": user, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def api_client(server: Server, user: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A plain client of `server`, with `user`'s bearer token when given."""
    headers = bearer(user) if user is not None else {}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=10) as client:
        yield client


async def create_task(client: httpx.AsyncClient, user: str) -> dict[str, Any]:
    response = await client.post(f"/api/{user}/tasks", json={"title": "watch me"})
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    assert isinstance(task["change_seq"], int) and task["change_seq"] >= 1, task
    return task


async def rename_task(client: httpx.AsyncClient, user: str, task: dict[str, Any]) -> int:
    response = await client.patch(f"/api/{user}/tasks/{task['id']}", json={"title": "renamed"})
    assert response.status_code == 200, response.text
    seq: int = response.json()["change_seq"]
    return seq


async def delete_task(client: httpx.AsyncClient, user: str, task: dict[str, Any]) -> None:
    response = await client.delete(f"/api/{user}/tasks/{task['id']}")
    assert response.status_code == 204, response.text


async def new_ticket(client: httpx.AsyncClient, user: str) -> str:
    response = await client.post(f"/api/{user}/events/ticket", headers=bearer(user))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"ticket", "expires_in"}, body
    assert isinstance(body["ticket"], str) and body["ticket"], body
    assert body["expires_in"] == 60, body
    ticket: str = body["ticket"]
    return ticket


# --- reading a stream ------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    kind: str  # the `event` field ("message" when there is none)
    id: str | None
    data: str
    at: float  # time.monotonic() when its closing blank line arrived

    def json(self) -> Any:
        return json.loads(self.data)


class Refused(AssertionError):
    """The events endpoint answered something other than a 200 stream (body read whole)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"stream refused: {response.status_code} {response.text}")
        self.response = response


class Stream:
    """An open events stream, read line by line in the background as a browser would."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines: list[str] = []
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.retry_seen = asyncio.Event()
        self.ended = asyncio.Event()
        self.end = ""  # how the stream ended: "closed" or the transport's error
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        fields: dict[str, list[str]] = {}
        try:
            async for line in self.response.aiter_lines():
                self.lines.append(line)
                if not line:
                    if "event" in fields or "data" in fields:
                        self.events.put_nowait(
                            Event(
                                kind=fields.get("event", ["message"])[-1],
                                id=fields["id"][-1] if "id" in fields else None,
                                data="\n".join(fields.get("data", [])),
                                at=time.monotonic(),
                            )
                        )
                    fields = {}
                elif not line.startswith(":"):  # a comment (`: ping`) carries nothing
                    name, _, value = line.partition(":")
                    fields.setdefault(name, []).append(value.removeprefix(" "))
                    if name == "retry":
                        self.retry_seen.set()
            self.end = "closed"
        except httpx.HTTPError as error:
            self.end = f"{type(error).__name__}: {error}"
        finally:
            self.ended.set()

    def _so_far(self) -> str:
        ended = f", then it ended ({self.end})" if self.ended.is_set() else ""
        return f"the stream so far: {self.lines!r}{ended}"

    async def connected(self) -> None:
        """Wait for the stream's opening line, which must be `retry: 3000`."""
        try:
            await asyncio.wait_for(self.retry_seen.wait(), 3)
        except TimeoutError:
            raise AssertionError(f"no `retry:` line within 3 s; {self._so_far()}") from None
        first = next(line for line in self.lines if line and not line.startswith(":"))
        name, _, value = first.partition(":")
        assert (name, value.strip()) == ("retry", "3000"), self._so_far()

    async def next_event(self, within: float) -> Event:
        try:
            return await asyncio.wait_for(self.events.get(), within)
        except TimeoutError:
            raise AssertionError(f"no event within {within} s; {self._so_far()}") from None

    async def changed(self, seq: int, within: float = DELIVERY) -> Event:
        """The next event, which must be `changed` with id and data `seq`, within `within` s."""
        event = await self.next_event(within)
        assert (event.kind, event.id, event.json()) == (
            "changed",
            str(seq),
            {"change_seq": seq},
        ), f"expected `changed` {seq}, got {event}; {self._so_far()}"
        return event

    async def quiet(self, seconds: float) -> None:
        """Nothing arrives for `seconds`."""
        try:
            event = await asyncio.wait_for(self.events.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {event}; {self._so_far()}")

    async def ends(self, within: float) -> None:
        try:
            await asyncio.wait_for(self.ended.wait(), within)
        except TimeoutError:
            raise AssertionError(f"still open {within} s later; {self._so_far()}") from None

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@asynccontextmanager
async def stream(
    server: Server,
    user: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> AsyncIterator[Stream]:
    """`GET /api/{user}/events` on `server`, open until the block ends; Refused otherwise."""
    timeout = httpx.Timeout(10, read=None)  # waits are bounded by Stream's methods instead
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=timeout) as client,
        client.stream("GET", f"/api/{user}/events", headers=headers, params=params) as response,
    ):
        if response.status_code != 200:
            await response.aread()
            raise Refused(response)
        events = Stream(response)
        try:
            yield events
        finally:
            await events.close()


async def refusal(
    server: Server,
    user: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """The answer to a stream request that must be refused."""
    try:
        async with stream(server, user, headers=headers, params=params) as events:
            raise AssertionError(f"stream accepted: {events.response.headers}")
    except Refused as refused:
        return refused.response


# --- PostgreSQL: the listener connections ------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    direct: str  # DATABASE_URL_DIRECT
    pooled: str  # DATABASE_URL, through PgBouncer in transaction mode
    database: str


async def listeners(database: str) -> list[int]:
    """The pids of the server backends of every process's LISTEN connection to `database`."""
    connection = await asyncpg.connect(admin_dsn(), timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            database,
            LISTENER,
        )
    finally:
        await connection.close()
    return [int(row["pid"]) for row in rows]


async def terminate_listeners(database: str) -> list[int]:
    """Kill every LISTEN connection to `database`, as a network blip or a restart does; their
    pids."""
    connection = await asyncpg.connect(admin_dsn(), timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name = $2",
            database,
            LISTENER,
        )
    finally:
        await connection.close()
    return [int(row["pid"]) for row in rows]


async def listener_count_becomes(database: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while (found := len(await listeners(database))) != count:
        assert time.monotonic() < deadline, f"{found} listener connections, not {count}"
        await asyncio.sleep(0.05)


# --- the browser's page origin ---------------------------------------------------------------


class PageHandler(SimpleHTTPRequestHandler):
    """Static files; `GET /signal/<name>` tells the test that the page got that far."""

    def __init__(self, *args: Any, signals: queue.Queue[str], **kwargs: Any) -> None:
        self.signals = signals  # before super().__init__, which handles the request
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        if self.path.startswith("/signal/"):
            self.signals.put(self.path.removeprefix("/signal/"))
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class Pages:
    origin: str
    folder: Path
    signals: queue.Queue[str]


# --- processes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres(postgresql_server_url: str, pgbouncer_server_url: str) -> Postgres:
    """The session's migrated PostgreSQL database, directly and through PgBouncer."""
    database = make_url(postgresql_server_url).database
    assert database
    return Postgres(direct=postgresql_server_url, pooled=pgbouncer_server_url, database=database)


def postgres_env(postgres: Postgres) -> dict[str, str]:
    return {
        **COMMON_ENV,
        **JWT_ENV,
        "DATABASE_URL": postgres.pooled,
        "DATABASE_URL_DIRECT": postgres.direct,
        "DB_POOL_MODE": "transaction",
        "AUTO_MIGRATE": "false",
    }


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pages]:
    """A static origin for browser pages, other than the API's."""
    folder = tmp_path_factory.mktemp("pages")
    signals: queue.Queue[str] = queue.Queue()
    handler = functools.partial(PageHandler, directory=str(folder), signals=signals)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Pages(f"http://127.0.0.1:{server.server_address[1]}", folder, signals)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def pair(
    postgres: Postgres, pages: Pages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Two API processes (A, B) on one PostgreSQL database, allowing the pages' origin."""
    env = postgres_env(postgres) | {"CORS_ORIGINS": pages.origin}
    with served(tmp_path_factory.mktemp("pair"), count=2, **env) as servers:
        a, b = servers
        yield a, b


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("sqlite")
    env = COMMON_ENV | {"DATABASE_URL": f"sqlite:///{folder / 'events.db'}", "AUTH_MODE": "none"}
    with served(folder, count=1, **env) as (server,):
        yield server


# --- across processes (PostgreSQL, PgBouncer) --------------------------------------------------


async def test_writes_on_one_process_reach_a_stream_on_another_within_a_second(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    user = new_user("ann")
    async with api_client(a, user) as api, stream(b, user, headers=bearer(user)) as events:
        headers = events.response.headers
        assert headers["content-type"].split(";")[0].strip() == "text/event-stream", headers
        assert headers["cache-control"] == "no-cache", headers
        assert headers["x-accel-buffering"] == "no", headers
        await events.connected()

        # Each wait starts once the write's response is in: its event is there within 1 s.
        task = await create_task(api, user)
        await events.changed(task["change_seq"])
        renamed = await rename_task(api, user, task)
        assert renamed == task["change_seq"] + 1
        await events.changed(renamed)
        await delete_task(api, user, task)
        await events.changed(renamed + 1)  # a delete takes the next value too
        await events.quiet(0.3)  # one event per write: nothing twice
        await quick_writes_are_one_event_each(api, user, events)


async def quick_writes_are_one_event_each(
    client: httpx.AsyncClient, user: str, events: Stream
) -> None:
    """Three writes back to back, without waiting for their events: one event each, in order
    (only an overflowing queue may coalesce)."""
    seqs = [(await create_task(client, user))["change_seq"] for _ in range(3)]
    for seq in seqs:
        await events.changed(seq)
    await events.quiet(0.2)


async def test_a_lost_listener_connection_is_a_resync_then_events_flow_again(
    pair: tuple[Server, Server], postgres: Postgres
) -> None:
    a, b = pair
    user = new_user("ben")
    async with api_client(a, user) as api, stream(b, user, headers=bearer(user)) as events:
        await events.connected()
        task = await create_task(api, user)
        await events.changed(task["change_seq"])

        killed = await terminate_listeners(postgres.database)
        assert killed, "no listener connection to terminate"
        resync = await events.next_event(within=5)
        assert resync.kind == "resync", resync
        reason = resync.json()["reason"]
        assert isinstance(reason, str) and reason, resync

        renamed = await rename_task(api, user, task)
        await events.changed(renamed)
        reconnected = await listeners(postgres.database)  # B's, re-established
        assert reconnected and not set(reconnected) & set(killed), (killed, reconnected)


@asynccontextmanager
async def notifications(database: str) -> AsyncIterator[list[str]]:
    """Every NOTIFY payload on the changes channel of `database` while the block runs."""
    heard: list[str] = []
    connection = await asyncpg.connect(admin_dsn(database), timeout=10)
    try:
        await connection.add_listener(CHANNEL, lambda *args: heard.append(str(args[-1])))
        yield heard
    finally:
        await connection.close()


async def watches_of(database: str, user: str) -> list[bool]:
    """Whether each process's watch of `user` is live."""
    connection = await asyncpg.connect(admin_dsn(database), timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT expires_at > now() AS live FROM event_watches WHERE user_id = $1", user
        )
    finally:
        await connection.close()
    return [bool(row["live"]) for row in rows]


async def test_only_writes_of_users_with_a_stream_somewhere_send_a_notify(
    pair: tuple[Server, Server], postgres: Postgres
) -> None:
    # Each NOTIFY makes commits take a database-wide lock in turn: a write sends one only
    # while some process streams its user (its watch is live).
    a, b = pair
    watched, unwatched = new_user("kim"), new_user("lou")
    async with (
        notifications(postgres.database) as heard,
        api_client(a, watched) as api,
        api_client(a, unwatched) as other,
    ):
        async with stream(b, watched, headers=bearer(watched)) as events:
            await events.connected()
            assert await watches_of(postgres.database, watched) == [True]
            seen = await create_task(api, watched)
            unseen = await create_task(other, unwatched)
            await events.changed(seen["change_seq"])
        await asyncio.sleep(0.2)  # the test's own LISTEN has heard whatever was sent
        assert f"{seen['change_seq']} {watched}" in heard, heard
        assert f"{unseen['change_seq']} {unwatched}" not in heard, heard
        assert not [payload for payload in heard if payload.endswith(f" {unwatched}")], heard
        assert await watches_of(postgres.database, unwatched) == []

        # The stream ended; its watch outlives it (WATCH_SECONDS, refreshed while streams
        # last) and, once expired, the user's writes are silent again.
        await expire_watches(postgres.database, watched)
        late = await create_task(api, watched)
        await asyncio.sleep(0.2)
        assert f"{late['change_seq']} {watched}" not in heard, heard


async def expire_watches(database: str, user: str) -> None:
    connection = await asyncpg.connect(admin_dsn(database), timeout=10)
    try:
        await connection.execute(
            "UPDATE event_watches SET expires_at = now() - interval '1 second' WHERE user_id = $1",
            user,
        )
    finally:
        await connection.close()


async def test_a_reconnect_behind_the_current_sequence_gets_the_current_one_at_once(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    user = new_user("cleo")
    async with api_client(a, user) as api:
        task = await create_task(api, user)
        current = await rename_task(api, user, task)

        behind = bearer(user) | {"Last-Event-ID": str(task["change_seq"])}
        async with stream(b, user, headers=behind) as events:
            await events.connected()
            await events.changed(current, within=0.5)
            await events.quiet(0.3)

        up_to_date = bearer(user) | {"Last-Event-ID": str(current)}
        async with stream(b, user, headers=up_to_date) as events:
            await events.connected()
            await events.quiet(0.5)
            later = await create_task(api, user)
            await events.changed(later["change_seq"])


async def test_a_ticket_opens_one_stream_of_its_own_user_and_other_credentials_are_refused(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    alice, bob = new_user("alice"), new_user("bob")
    async with api_client(a) as api, api_client(a, alice) as alices:
        # A user who never wrote anything yet; the ticket comes from A and is used on B.
        ticket = await new_ticket(api, alice)
        async with stream(b, alice, params={"ticket": ticket}) as events:  # no Authorization
            await events.connected()
            task = await create_task(alices, alice)
            await events.changed(task["change_seq"])

        assert_problem(await refusal(b, alice, params={"ticket": ticket}), 401)  # used once
        assert_problem(await refusal(a, alice, params={"ticket": ticket}), 401)
        assert_problem(await refusal(b, bob, params={"ticket": await new_ticket(api, alice)}), 403)
        assert_problem(await refusal(b, alice, params={"ticket": "not-a-ticket"}), 401)
        assert_problem(await refusal(b, alice), 401)
        assert_problem(await refusal(b, alice, headers=bearer(bob)), 403)

        assert_problem(await api.post(f"/api/{alice}/events/ticket"), 401)
        assert_problem(await api.post(f"/api/{alice}/events/ticket", headers=bearer(bob)), 403)


async def test_a_ticket_expires_after_60_seconds(
    pair: tuple[Server, Server], postgres: Postgres
) -> None:
    a, b = pair
    user = new_user("dora")
    async with api_client(a) as api:
        ticket = await new_ticket(api, user)
    # A minute does not fit the test's budget: the ticket's expiry is moved 61 s back instead.
    connection = await asyncpg.connect(admin_dsn(postgres.database), timeout=10)
    try:
        lifetimes = await connection.fetch(
            "UPDATE event_tickets SET expires_at = expires_at - interval '61 seconds' "
            "WHERE user_id = $1 RETURNING extract(epoch FROM expires_at - now()) + 61 AS left",
            user,
        )
    finally:
        await connection.close()
    assert len(lifetimes) == 1 and 50 < float(lifetimes[0]["left"]) <= 60, lifetimes
    assert_problem(await refusal(b, user, params={"ticket": ticket}), 401)


async def test_streams_per_user_and_process_are_limited(pair: tuple[Server, Server]) -> None:
    a, b = pair
    user, other = new_user("eve"), new_user("finn")
    async with AsyncExitStack() as stack, api_client(a, user) as api:
        kept = await stack.enter_async_context(stream(b, user, headers=bearer(user)))
        await kept.connected()
        async with stream(b, user, headers=bearer(user)) as second:
            await second.connected()
            refused = await refusal(b, user, headers=bearer(user))
            assert_problem(refused, 429)
            retry_after = refused.headers.get("retry-after", "")
            assert retry_after.isdigit() and int(retry_after) >= 1, refused.headers

            # Per user and per process: another user on B, the same user on A, still get one.
            async with stream(b, other, headers=bearer(other)) as events:
                await events.connected()
            async with stream(a, user, headers=bearer(user)) as events:
                await events.connected()

        # `second` is closed: a new stream is accepted once B has noticed (allow a moment).
        reopened = await open_when_allowed(stack, b, user, within=2)
        await reopened.connected()
        task = await create_task(api, user)
        await kept.changed(task["change_seq"])
        await reopened.changed(task["change_seq"])


async def open_when_allowed(
    stack: AsyncExitStack, server: Server, user: str, within: float
) -> Stream:
    deadline = time.monotonic() + within
    while True:
        try:
            return await stack.enter_async_context(stream(server, user, headers=bearer(user)))
        except Refused as refused:
            assert refused.response.status_code == 429, refused
            assert time.monotonic() < deadline, f"still refused {within} s after a stream closed"
        await asyncio.sleep(0.1)


async def test_each_process_holds_one_listener_while_it_has_streams_then_closes_it(
    pair: tuple[Server, Server], postgres: Postgres
) -> None:
    a, b = pair
    # Listeners of earlier tests' streams close 1 s (EVENTS_LISTENER_IDLE_SECONDS) after them.
    await listener_count_becomes(postgres.database, 0, within=4)
    first, second = new_user("gus"), new_user("hana")
    async with AsyncExitStack() as stack:
        for server, user in ((b, first), (b, first), (b, second)):
            events = await stack.enter_async_context(stream(server, user, headers=bearer(user)))
            await events.connected()
        assert len(await listeners(postgres.database)) == 1  # B's, for all three
        events = await stack.enter_async_context(stream(a, first, headers=bearer(first)))
        await events.connected()
        assert len(await listeners(postgres.database)) == 2  # and A's
    await asyncio.sleep(0.2)
    assert len(await listeners(postgres.database)) == 2, "closed before the idle delay"
    await listener_count_becomes(postgres.database, 0, within=3)


# --- shutdown --------------------------------------------------------------------------------


@pytest.fixture
def lone_server(postgres: Postgres, tmp_path: Path) -> Iterator[Server]:
    """A process of its own: the test stops it."""
    with served(tmp_path, count=1, **postgres_env(postgres)) as (server,):
        yield server


async def test_sigterm_closes_open_streams_and_the_process_exits_promptly(
    lone_server: Server, postgres: Postgres
) -> None:
    user, other = new_user("ivo"), new_user("jay")
    async with (
        api_client(lone_server, user) as api,
        stream(lone_server, user, headers=bearer(user)) as first,
        stream(lone_server, other, headers=bearer(other)) as second,
    ):
        await first.connected()
        await second.connected()
        task = await create_task(api, user)
        await first.changed(task["change_seq"])

        started = time.monotonic()
        lone_server.process.send_signal(signal.SIGTERM)
        await first.ends(within=3)
        await second.ends(within=3)
        while (status := lone_server.process.poll()) is None:
            assert time.monotonic() - started < 3, (
                f"running 3 s after SIGTERM:\n{lone_server.log()}"
            )
            await asyncio.sleep(0.02)
        stopped_in = time.monotonic() - started
    assert status == 0, lone_server.log()
    assert stopped_in < 3, (
        f"exit {stopped_in:.2f} s after SIGTERM (SHUTDOWN_TIMEOUT {SHUTDOWN_TIMEOUT})"
    )
    # It took its watches with it: writes of its streams' users stop sending NOTIFY now.
    assert await watches_of(postgres.database, user) == []
    assert await watches_of(postgres.database, other) == []


# --- a browser on another origin -------------------------------------------------------------

PAGE = """<!doctype html>
<html><body><pre id="out">pending</pre>
<script>
const API = "%(api)s", USER = "%(user)s", TOKEN = "%(token)s";
const out = {};
function done() { document.getElementById("out").textContent = JSON.stringify(out); }
async function run() {
  try {
    const r = await fetch(`${API}/api/${USER}/events/ticket`, {
      method: "POST", headers: { Authorization: `Bearer ${TOKEN}` },
    });
    out.ticketStatus = r.status;
    const { ticket } = await r.json();
    const url = `${API}/api/${USER}/events?ticket=${encodeURIComponent(ticket)}`;
    const source = new EventSource(url);
    source.onopen = () => { fetch(`/signal/opened-${USER}`); };
    source.addEventListener("changed", (event) => {
      out.changed = { id: event.lastEventId, data: JSON.parse(event.data) };
      source.close();
      done();
    });
    source.onerror = () => {
      out.error = `EventSource error, readyState ${source.readyState}`;
      source.close();
      done();
    };
  } catch (error) {
    out.error = String(error);
    done();
  }
}
run();
</script></body></html>
"""


def browse(chromium: str, url: str, workdir: Path) -> str:
    """The page's DOM once its scripts are done (virtual time stands still while a stream is
    open, so the DOM is dumped after the page closed its EventSource)."""
    try:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"the page was still running after 30 s: {error.stderr!r}") from None
    return result.stdout


async def test_a_page_on_another_origin_receives_changes_through_an_eventsource(
    chromium: str, pair: tuple[Server, Server], pages: Pages, tmp_path: Path
) -> None:
    a, b = pair
    user = new_user("kim")
    token = bearer(user)["Authorization"].removeprefix("Bearer ")
    (pages.folder / f"{user}.html").write_text(
        PAGE % {"api": a.base_url, "user": user, "token": token}
    )
    browser = asyncio.ensure_future(
        asyncio.to_thread(browse, chromium, f"{pages.origin}/{user}.html", tmp_path)
    )
    # Wait until the page's EventSource is open (or the page gave up), then write on B.
    deadline = time.monotonic() + 20
    opened = False
    while not opened and not browser.done():
        assert time.monotonic() < deadline, "the page's EventSource did not open within 20 s"
        with contextlib.suppress(queue.Empty):
            opened = pages.signals.get_nowait() == f"opened-{user}"
        await asyncio.sleep(0.05)
    if opened:
        async with api_client(b, user) as api:
            task = await create_task(api, user)
    dom = await browser
    match = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert match is not None, dom[:2000]
    out = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert opened, out
    seq = task["change_seq"]
    assert out == {"ticketStatus": 200, "changed": {"id": str(seq), "data": {"change_seq": seq}}}


# --- SQLite: one process, in-process fan-out -------------------------------------------------


async def test_on_sqlite_a_stream_receives_the_changes_of_its_process(
    sqlite_server: Server,
) -> None:
    user = new_user("lou")
    async with api_client(sqlite_server) as api, stream(sqlite_server, user) as events:
        await events.connected()
        task = await create_task(api, user)
        await events.changed(task["change_seq"])
        renamed = await rename_task(api, user, task)
        await events.changed(renamed)
        await delete_task(api, user, task)
        await events.changed(renamed + 1)
        await events.quiet(0.3)
        await quick_writes_are_one_event_each(api, user, events)
