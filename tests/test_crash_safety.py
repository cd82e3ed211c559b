"""Crash safety and graceful shutdown of a real `todo-api serve` process on PostgreSQL.

SIGKILL in the middle of concurrent writes loses nothing that was answered 2xx and invents
nothing: after a restart every acknowledged write is stored exactly as it was answered, and a
write that was in flight at the kill has either landed whole or not at all.

SIGTERM drains: the server stops accepting connections, lets in-flight requests finish (for up
to SHUTDOWN_TIMEOUT seconds), closes the pool and exits 0.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from support import Server, create_task, scratch_postgresql_database, served

WRITERS = 16
# The kill comes once this many writes were answered 2xx, or after LOAD_SECONDS with at least
# ACKED_AT_LEAST (a slow, shared machine answers fewer).
ACKED_BEFORE_KILL = 300
LOAD_SECONDS = 2.0
ACKED_AT_LEAST = 100
TASK_COLUMNS = (
    "id, user_id, title, description, completed, completed_at, version, created_at, updated_at"
)

TASK_NAMES = frozenset(name.strip() for name in TASK_COLUMNS.split(","))

Kind = Literal["create", "update", "toggle", "delete"]
SUCCESS = {"create": 201, "update": 200, "toggle": 200, "delete": 204}
# A task as stored: the API's fields, with times parsed. None in an allowed-state list: absent.
State = dict[str, Any]


@pytest.fixture
def database() -> Iterator[str]:
    """A scratch database: every task in it was written by the test at hand."""
    with scratch_postgresql_database("todo_crash") as url:
        yield url


def environment(url: str, **variables: str) -> dict[str, str]:
    # AUTO_MIGRATE is on by default: the first server creates the schema.
    return {"APP_ENV": "test", "DATABASE_URL": url, **variables}


async def connect(url: str) -> Any:
    """A direct connection to the scratch database, beside the server's own."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return await asyncpg.connect(dsn, timeout=10)


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.02)


async def count_is(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def other_backends(db: Any) -> int:
    """Sessions on this database besides `db`'s own (the server's pool, or its leftovers)."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return count


async def no_server_backends(db: Any) -> None:
    """Wait until no session of a stopped server is left: a statement sent just before the
    process died still runs (and, alone in autocommit, commits) until its backend notices."""
    await wait_until(lambda: count_is(other_backends(db), 0), "server sessions gone", within=10)


async def updates_waiting_on_a_lock(db: Any) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE tasks%'"
    )
    return count


@asynccontextmanager
async def rows_locked(
    url: str, task_ids: list[str]
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The tasks' rows locked by a transaction of the test's own (a write to them waits in the
    database, provably in flight) until the yielded `release` is called, or the block ends."""
    # Not the session that watches pg_stat_activity: inside a transaction, that view is frozen
    # at its first read.
    holder = await connect(url)

    async def release() -> None:
        if not holder.is_closed():
            await holder.execute("ROLLBACK")
            await holder.close()

    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT 1 FROM tasks WHERE id = ANY($1::uuid[]) FOR UPDATE", task_ids)
        yield release
    finally:
        await release()


async def stored_tasks(db: Any) -> dict[str, State]:
    rows = await db.fetch(f"SELECT {TASK_COLUMNS} FROM tasks")
    return {str(row["id"]): {**dict(row), "id": str(row["id"])} for row in rows}


def as_stored(task: dict[str, Any]) -> State:
    """An API task as the database holds it (RFC 3339 strings to datetimes)."""
    names = ("completed_at", "created_at", "updated_at")
    times = {name: datetime.fromisoformat(task[name]) for name in names if task[name] is not None}
    # The columns stored as the API shows them (TASK_COLUMNS): what these writes change.
    return {name: value for name, value in (task | times).items() if name in TASK_NAMES}


def matches(stored: State | None, allowed: State | None) -> bool:
    """`stored` is the allowed state: absent when that is None, else every field it names."""
    if allowed is None or stored is None:
        return stored is allowed
    return all(stored[name] == value for name, value in allowed.items())


# --- SIGKILL under load ---------------------------------------------------------------------


@dataclass
class Write:
    user: str
    kind: Kind
    task_id: str | None  # None for a create
    body: dict[str, Any] | None
    key: str | None = None  # the Idempotency-Key of a create
    outcome: Literal["sent", "acked", "in flight"] = "sent"
    answer: dict[str, Any] | None = None


def expected_after(before: State, write: Write) -> State | None:
    """The task once `write` applied to it, but for the times the server's clock sets."""
    if write.kind == "delete":
        return None
    after = {
        name: value for name, value in before.items() if name not in ("updated_at", "completed_at")
    }
    after["version"] = before["version"] + 1
    if write.kind == "toggle":
        after["completed"] = not before["completed"]
    else:
        after |= write.body or {}
    return after


def expected_created(write: Write) -> State:
    """A created task, but for the id and times the server chose."""
    body = write.body or {}
    return {
        "user_id": write.user,
        "title": body["title"],
        "description": body.get("description"),
        "completed": body.get("completed", False),
        "version": 1,
    }


@dataclass
class Writer:
    """One client writing its own user's tasks, one request at a time, remembering each."""

    user: str
    rng: random.Random
    writes: list[Write] = field(default_factory=list)
    live: dict[str, State] = field(default_factory=dict)  # its tasks as last acknowledged

    def acked(self) -> int:
        return sum(write.outcome == "acked" for write in self.writes)

    def next_write(self) -> Write:
        n = len(self.writes)
        if len(self.live) < 3 or self.rng.random() < 0.35:
            body: dict[str, Any] = {"title": f"{self.user} task {n}"}
            if self.rng.random() < 0.5:
                body["description"] = f"note {n}"
            if self.rng.random() < 0.2:
                body["completed"] = True
            key = f"{self.user}-create-{n}" if self.rng.random() < 0.5 else None
            return Write(self.user, "create", None, body, key)
        task_id = self.rng.choice(list(self.live))
        roll = self.rng.random()
        if roll < 0.4:
            changes: dict[str, Any] = {"title": f"{self.user} task {n} (edited)"}
            if roll < 0.15:
                changes["description"] = None if roll < 0.05 else f"edited note {n}"
            return Write(self.user, "update", task_id, changes)
        if roll < 0.75:
            return Write(self.user, "toggle", task_id, None)
        return Write(self.user, "delete", task_id, None)

    async def run(self, http: httpx.AsyncClient, killing: asyncio.Event) -> None:
        while not killing.is_set():
            write = self.next_write()
            self.writes.append(write)
            try:
                response = await self.send(http, write)
            except httpx.TransportError as error:
                # Sent, but the process died before answering: it may or may not have landed.
                assert killing.is_set(), f"{write} failed before the kill: {error!r}"
                write.outcome = "in flight"
                return
            assert response.status_code == SUCCESS[write.kind], (write, response.text)
            write.outcome = "acked"
            if write.kind == "delete":
                del self.live[write.task_id or ""]
            else:
                write.answer = response.json()
                self.live[write.answer["id"]] = as_stored(write.answer)

    async def send(self, http: httpx.AsyncClient, write: Write) -> httpx.Response:
        tasks = f"/api/{self.user}/tasks"
        if write.kind == "create":
            headers = {"Idempotency-Key": write.key} if write.key else None
            return await http.post(tasks, json=write.body, headers=headers)
        if write.kind == "update":
            return await http.patch(f"{tasks}/{write.task_id}", json=write.body)
        if write.kind == "toggle":
            return await http.patch(f"{tasks}/{write.task_id}/complete")
        return await http.delete(f"{tasks}/{write.task_id}")


@dataclass
class Expectations:
    """What the database may hold after the kill, from what each writer sent and was told."""

    allowed: dict[str, list[State | None]] = field(default_factory=dict)  # per acked task
    unacked_creates: list[State] = field(default_factory=list)  # each may exist once
    in_flight: list[Write] = field(default_factory=list)

    @classmethod
    def of(cls, writers: list[Writer]) -> Expectations:
        expectations = cls()
        for writer in writers:
            acked: dict[str, State | None] = {}
            for write in writer.writes:
                if write.outcome == "in flight":
                    expectations.add_in_flight(write, acked)
                elif write.kind == "create":
                    assert write.answer is not None
                    created = as_stored(write.answer)
                    assert matches(created, expected_created(write)), write
                    acked[created["id"]] = created
                else:
                    before = acked[write.task_id or ""]
                    assert before is not None
                    after = None if write.answer is None else as_stored(write.answer)
                    # The answers themselves are consistent: what an in-flight write would
                    # have made of its task is predicted by the same rule.
                    assert matches(after, expected_after(before, write)), write
                    acked[write.task_id or ""] = after
            for task_id, state in acked.items():
                expectations.allowed.setdefault(task_id, []).insert(0, state)
        return expectations

    def add_in_flight(self, write: Write, acked: dict[str, State | None]) -> None:
        self.in_flight.append(write)
        if write.kind == "create":
            self.unacked_creates.append(expected_created(write))
            return
        before = acked[write.task_id or ""]
        assert before is not None
        self.allowed[write.task_id or ""] = [expected_after(before, write)]

    def check(self, stored: dict[str, State]) -> int:
        """Assert that `stored` is one of the allowed outcomes; how many in-flight writes
        landed."""
        unexplained = dict(stored)
        landed = 0
        for task_id, allowed in self.allowed.items():
            found = unexplained.pop(task_id, None)
            assert any(matches(found, state) for state in allowed), (task_id, found, allowed)
            landed += len(allowed) > 1 and not matches(found, allowed[0])
        leftover = list(self.unacked_creates)
        for task in unexplained.values():
            # Never acknowledged: only a create in flight at the kill may have made it, once.
            origin = next((state for state in leftover if matches(task, state)), None)
            assert origin is not None, f"stored, but neither acknowledged nor in flight: {task}"
            leftover.remove(origin)
            landed += 1
        return landed


async def load_until_killed(server: Server) -> list[Writer]:
    writers = [Writer(f"crash-{i}", random.Random(i)) for i in range(WRITERS)]
    killing = asyncio.Event()
    limits = httpx.Limits(max_connections=WRITERS)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits) as http:
        running = [asyncio.create_task(writer.run(http, killing)) for writer in writers]
        try:
            started = time.monotonic()
            while (acked := sum(w.acked() for w in writers)) < ACKED_BEFORE_KILL:
                for task in running:
                    if task.done():
                        task.result()  # a writer failed before the kill: its assertion
                elapsed = time.monotonic() - started
                if elapsed > LOAD_SECONDS and acked >= ACKED_AT_LEAST:
                    break
                assert elapsed < 30, f"only {acked} writes answered in {elapsed:.0f} s"
                await asyncio.sleep(0.01)
            killing.set()  # first, so that no writer starts another request after the kill
            server.kill()
            await asyncio.wait_for(asyncio.gather(*running), timeout=30)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
    return writers


async def test_sigkill_under_load_keeps_every_acknowledged_write_and_invents_none(
    database: str, tmp_path: Path
) -> None:
    env = environment(database, ACCESS_LOG="false")
    with served(tmp_path, count=1, **env) as (server,):
        writers = await load_until_killed(server)
        assert server.process.returncode == -signal.SIGKILL

    acked = sum(writer.acked() for writer in writers)
    expectations = Expectations.of(writers)
    assert acked >= ACKED_AT_LEAST
    assert expectations.in_flight, "the kill caught no write in flight"

    retried = [w for w in expectations.in_flight if w.kind == "create" and w.key]
    db = await connect(database)
    try:
        await no_server_backends(db)
        landed = expectations.check(await stored_tasks(db))

        with served(tmp_path, count=1, **env) as (restarted,):
            async with httpx.AsyncClient(base_url=restarted.base_url, timeout=30) as http:
                # The API serves exactly what is stored.
                stored = await stored_tasks(db)
                for writer in writers:
                    mine = {
                        key: task for key, task in stored.items() if task["user_id"] == writer.user
                    }
                    assert await all_tasks(http, writer.user) == mine
                # A create in flight at the kill, retried with its Idempotency-Key, exists once
                # afterwards: replayed when it had landed, made now when it had not.
                for write in retried:
                    await retry_create(http, db, write)
    finally:
        await db.close()

    print(
        f"\n{acked} writes acknowledged and verified over {len(expectations.allowed)} tasks; "
        f"{len(expectations.in_flight)} in flight at the kill, {landed} of which landed; "
        f"{len(retried)} keyed creates retried"
    )


async def all_tasks(http: httpx.AsyncClient, user: str) -> dict[str, State]:
    found: dict[str, State] = {}
    params: dict[str, str | int] = {"limit": 200}
    while True:
        response = await http.get(f"/api/{user}/tasks", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        found |= {task["id"]: as_stored(task) for task in page["items"]}
        if page["next_cursor"] is None:
            return found
        params["cursor"] = page["next_cursor"]


async def retry_create(http: httpx.AsyncClient, db: Any, write: Write) -> None:
    assert write.body is not None and write.key is not None
    title = write.body["title"]
    before = await db.fetch("SELECT id FROM tasks WHERE title = $1", title)
    response = await http.post(
        f"/api/{write.user}/tasks",
        json=write.body,
        headers={"Idempotency-Key": write.key},
    )
    assert response.status_code == 201, response.text
    after = await db.fetch("SELECT id FROM tasks WHERE title = $1", title)
    assert len(after) == 1, after
    if before:
        assert response.headers.get("Idempotent-Replayed") == "true"
        assert response.json()["id"] == str(before[0]["id"])
    else:
        assert "Idempotent-Replayed" not in response.headers
        assert response.json()["id"] == str(after[0]["id"])


# --- SIGTERM --------------------------------------------------------------------------------


def logged_at(log: str, message: str) -> datetime:
    """When the first line with `message` was logged (console format: `2025-01-31 12:00:00,123`)."""
    line = next((line for line in log.splitlines() if message in line), None)
    assert line is not None, f"{message!r} not logged:\n{log}"
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


@dataclass
class Endpoint:
    host: str
    port: int

    @classmethod
    def of(cls, server: Server) -> Endpoint:
        url = httpx.URL(server.base_url)
        return cls(url.host, url.port or 80)

    async def refuses_connections(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            # The kernel had queued this connection in the listen backlog, and the server closed
            # the listening socket before accepting it: it is closing, not yet closed. Ask again.
            return False
        writer.close()
        return False

    async def idle_keep_alive_connection(self) -> asyncio.StreamReader:
        """A connection that has had one request answered and stays open for the next."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        return reader


async def exit_status(process: subprocess.Popen[str], within: float) -> int:
    deadline = time.monotonic() + within
    while (status := process.poll()) is None:
        assert time.monotonic() < deadline, f"still running {within} s after SIGTERM"
        await asyncio.sleep(0.02)
    return status


async def test_sigterm_stops_accepting_finishes_in_flight_requests_and_exits_0(
    database: str, tmp_path: Path
) -> None:
    bound = 10
    with served(tmp_path, count=1, **environment(database, SHUTDOWN_TIMEOUT=str(bound))) as (
        server,
    ):
        endpoint = Endpoint.of(server)
        async with AsyncExitStack() as stack:
            db = await connect(database)
            stack.push_async_callback(db.close)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
                tasks = [await create_task(http, "drain", title=f"slow {i}") for i in range(3)]
                idle = await endpoint.idle_keep_alive_connection()
                locked = rows_locked(database, [task["id"] for task in tasks])
                release = await stack.enter_async_context(locked)
                patches = [
                    asyncio.create_task(
                        http.patch(f"/api/drain/tasks/{task['id']}", json={"title": "drained"})
                    )
                    for task in tasks
                ]
                await wait_until(
                    lambda: count_is(updates_waiting_on_a_lock(db), 3), "PATCHes waiting", 10
                )

                server.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                await wait_until(endpoint.refuses_connections, "listener closed", within=5)
                with pytest.raises(httpx.ConnectError):
                    await http.get("/health")  # no idle connection left to reuse: a new one
                assert await asyncio.wait_for(idle.read(), 5) == b""  # idle one closed
                await asyncio.sleep(0.5)  # the server waits as long as its requests need
                assert not any(patch.done() for patch in patches)
                assert server.process.poll() is None  # still draining

                await release()
                # Each in-flight request is answered in full: no reset, no error.
                answers = await asyncio.gather(*patches)
            status = await exit_status(server.process, within=bound)
            stopped_in = time.monotonic() - signalled
            assert status == 0, server.log()
            for answer in answers:
                assert answer.status_code == 200, answer.text
                assert answer.json()["title"] == "drained"
                assert answer.json()["version"] == 2
                assert answer.headers["connection"] == "close"
            stored = await stored_tasks(db)
            assert {task["title"] for task in stored.values()} == {"drained"}
            await no_server_backends(db)

        log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log
    steps = [
        "Shutting down",
        "Waiting for connections to close",
        "PATCH /api/{user_id}/tasks/{task_id} 200",
        "Application shutdown complete",
        "Finished server process",
    ]
    positions = [log.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), log
    print(f"\nSIGTERM to exit 0: {stopped_in:.2f} s, 3 in-flight PATCHes answered 200")


async def test_sigterm_cancels_what_outlasts_shutdown_timeout_and_exits_anyway(
    database: str, tmp_path: Path
) -> None:
    bound = 1
    with served(tmp_path, count=1, **environment(database, SHUTDOWN_TIMEOUT=str(bound))) as (
        server,
    ):
        async with AsyncExitStack() as stack:
            db = await connect(database)
            stack.push_async_callback(db.close)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
                task = await create_task(http, "stuck", title="before")
                release = await stack.enter_async_context(rows_locked(database, [task["id"]]))
                patch = asyncio.create_task(
                    http.patch(f"/api/stuck/tasks/{task['id']}", json={"title": "after"})
                )
                await wait_until(
                    lambda: count_is(updates_waiting_on_a_lock(db), 1), "PATCH waiting", 10
                )
                server.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                status = await exit_status(server.process, within=bound + 10)
                stopped_in = time.monotonic() - signalled
                try:
                    answer: httpx.Response | Exception = await patch
                except httpx.TransportError as error:
                    answer = error
                await release()
            await no_server_backends(db)
            stored = (await stored_tasks(db))[task["id"]]
        log = server.log()

    applied = stored["title"] == "after"
    print(
        f"\nSIGTERM to exit {status}: {stopped_in:.2f} s (bound {bound} s); the PATCH still "
        f"waiting got {answer!r}, and was {'applied' if applied else 'not applied'}"
    )
    assert status == 0, log
    assert bound <= stopped_in < bound + 10  # the rest: interpreter exit on a busy machine
    cancelled = "Cancel 1 running task(s), timeout graceful shutdown exceeded"
    waited = logged_at(log, cancelled) - logged_at(log, "Shutting down")
    assert bound <= waited.total_seconds() < bound + 3, log
    assert "Application shutdown complete" in log, log
    # Cancelled before it was answered: uvicorn answers a plain 500 itself, and closes.
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 500 and answer.headers["connection"] == "close", answer
    # The cancelled write is all or nothing.
    before = as_stored(task)
    assert matches(stored, before) or matches(
        stored, {**before, "title": "after", "version": 2, "updated_at": stored["updated_at"]}
    ), stored
