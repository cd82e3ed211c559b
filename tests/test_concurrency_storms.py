"""Storms of concurrent requests on one user (issue #8 "Reliability").

PostgreSQL only: SQLite serialises its writers, so nothing there can race. The API is a served
`todo-api serve` process, reached over TCP from one client connection per request in flight;
some tests also run through PgBouncer in transaction mode (the app in process there). The
server has fewer pooled database connections than requests in flight, so requests also queue
for the pool. Every test asserts: no 5xx, the exact final state read straight from PostgreSQL
(never through the API), and nothing logged at ERROR by the server.

test_concurrency.py already proves the basics in process (toggles, first-write provisioning,
patches of different fields); this module adds sizes, version bookkeeping, optimistic
concurrency, deletes racing with writes, and a real deadlock that the data layer must retry.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from log_capture import captured_logs
from support import PROBLEM, Server, create_task, running, served, settings_for
from todo_api.platform.database.database import CONFLICT_ATTEMPTS

pytestmark = pytest.mark.through_pooler

# Fewer database connections than concurrent requests: queueing for the pool is part of every
# storm. The pool timeout is generous so a slow shared machine cannot turn queueing into 503s.
POOL_SIZE = 8
POOL_OVERFLOW = 4
CHAIN = 25
DEADLOCK = "SQLSTATE 40P01"  # in the warning the data layer logs before each retry


# Direct PostgreSQL by default; the tests marked with this also run through PgBouncer.
THROUGH_POOLER_TOO = pytest.mark.parametrize("backend", ["postgresql", "pgbouncer"], indirect=True)


@pytest.fixture(params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def served_api(
    postgresql_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One `todo-api serve` process for the module; each test works on a user of its own."""
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": postgresql_server_url,
        "AUTO_MIGRATE": "false",  # the session database is migrated already
        "AUTH_MODE": "none",
        "LOG_FORMAT": "json",  # parsed below: retries and errors are found by request id
        "ACCESS_LOG": "false",
        "DB_POOL_SIZE": str(POOL_SIZE),
        "DB_MAX_OVERFLOW": str(POOL_OVERFLOW),
        "DB_POOL_TIMEOUT": "60",
    }
    with served(tmp_path_factory.mktemp("storm"), count=1, **env) as (server,):
        yield server


@dataclass
class ServerLog:
    """The API's JSON log lines written since the test began."""

    text: Callable[[], str]
    start: int = 0

    def __post_init__(self) -> None:
        self.start = len(self.text())

    def records(self) -> list[dict[str, Any]]:
        lines = self.text()[self.start :].splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def retries(self, request_id: str, containing: str) -> list[dict[str, Any]]:
        """The data layer's warnings, each logged before it runs a transaction again."""
        return [
            record
            for record in self.records()
            if record.get("request_id") == request_id
            and record["level"] == "WARNING"
            and record["logger"] == "todo_api.database"
            and containing in record["message"]
        ]

    def assert_no_errors(self) -> None:
        loud = [record for record in self.records() if record["level"] in ("ERROR", "CRITICAL")]
        assert not loud, loud


@dataclass(frozen=True)
class Api:
    http: httpx.AsyncClient
    log: ServerLog


@pytest.fixture
async def api(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """Direct: the served process, over TCP. Through PgBouncer: the app in process (starting a
    second server process costs more than the tests that use it), on a pool just as small."""
    if backend == "postgresql":
        server: Server = request.getfixturevalue("served_api")
        # One TCP connection per request in flight: the server sees them all at once. Idle
        # connections are dropped well before uvicorn's 5 s keep-alive timeout: a request sent
        # just as the server closes its connection fails with ReadError (a client-side race).
        limits = httpx.Limits(
            max_connections=200, max_keepalive_connections=200, keepalive_expiry=1
        )
        async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=60) as http:
            yield Api(http, ServerLog(server.log))
        return
    settings = settings_for(
        request.getfixturevalue("pgbouncer_server_url"),
        db_pool_mode="transaction",
        db_pool_size=POOL_SIZE,
        db_max_overflow=POOL_OVERFLOW,
        db_pool_timeout=60,
        access_log=False,
    )
    with captured_logs(settings) as capture:
        async with running(settings) as http:
            yield Api(http, ServerLog(capture.text))


@pytest.fixture
def http(api: Api) -> httpx.AsyncClient:
    return api.http


@pytest.fixture
def server_log(api: Api) -> ServerLog:
    return api.log


@pytest.fixture
async def db(postgresql_server_url: str) -> AsyncIterator[Any]:
    """A direct connection to the database (also when the API goes through PgBouncer)."""
    connection = await asyncpg.connect(postgresql_server_url, timeout=10)
    yield connection
    await connection.close()


@pytest.fixture
def user() -> str:
    return f"storm-{uuid.uuid4().hex[:12]}"


def tasks_url(user: str, task_id: str | None = None) -> str:
    return f"/api/{user}/tasks" + (f"/{task_id}" if task_id else "")


async def storm(requests: Sequence[Awaitable[httpx.Response]]) -> list[httpx.Response]:
    """All requests at once; none of them answered with a 5xx."""
    responses = await asyncio.gather(*requests)
    server_errors = [
        (r.request.method, r.request.url.path, r.status_code, r.text)
        for r in responses
        if r.status_code >= 500
    ]
    assert server_errors == []
    return responses


async def stored_tasks(db: Any, user: str) -> dict[str, dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM tasks WHERE user_id = $1", user)
    return {str(row["id"]): dict(row) for row in rows}


# What these storms change: the fields compared between a stored row and a served task.
COMPARED = (
    "id", "user_id", "list_id", "title", "description", "completed", "completed_at",
    "position", "created_at", "updated_at", "version",
)  # fmt: skip


def as_served(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row in the shape of the API's task JSON."""
    served = {**row, "id": str(row["id"]), "list_id": str(row["list_id"])}
    return {key: served[key] for key in COMPARED}


def as_parsed(body: dict[str, Any]) -> dict[str, Any]:
    """A task JSON body with its timestamps parsed, to compare with a stored row."""
    times = ("completed_at", "created_at", "updated_at")
    parsed = body | {
        key: datetime.fromisoformat(body[key]) for key in times if body[key] is not None
    }
    return {key: parsed[key] for key in COMPARED}


# --- creates ----------------------------------------------------------------------------------


@THROUGH_POOLER_TOO
async def test_a_hundred_creates_at_once_some_sharing_idempotency_keys(
    http: httpx.AsyncClient, db: Any, user: str, server_log: ServerLog
) -> None:
    # 60 plain creates and 10 keys each sent 4 times (a client retrying while the first try
    # is still running), shuffled together.
    plain_bodies: list[dict[str, Any]] = [
        {"title": f"plain {i}", "completed": i % 3 == 0} for i in range(60)
    ]
    keyed_bodies: list[dict[str, Any]] = [
        {"title": f"keyed {g}", "description": f"group {g}"} for g in range(10)
    ]
    requests: list[tuple[str | None, dict[str, Any]]] = [(None, body) for body in plain_bodies]
    requests += [(f"key-{g}", body) for g, body in enumerate(keyed_bodies)] * 4
    random.Random(8).shuffle(requests)

    responses = await storm(
        [
            http.post(tasks_url(user), json=body, headers={"Idempotency-Key": key} if key else {})
            for key, body in requests
        ]
    )

    assert [r.status_code for r in responses] == [201] * 100
    plain = [r.json() for (key, _), r in zip(requests, responses, strict=True) if key is None]
    keyed: dict[str, list[httpx.Response]] = defaultdict(list)
    for (key, _), response in zip(requests, responses, strict=True):
        if key is not None:
            keyed[key].append(response)
    assert len({task["id"] for task in plain}) == 60
    for key, replies in keyed.items():
        # One request created the task; the three others replayed it (after waiting for the
        # first one's claim on the key to commit, if it had not yet).
        assert len({r.content for r in replies}) == 1, key
        assert len({(r.headers["ETag"], r.headers["Location"]) for r in replies}) == 1, key
        assert sorted(r.headers.get("Idempotent-Replayed", "") for r in replies) == [
            "",
            "true",
            "true",
            "true",
        ], key
    created = plain + [replies[0].json() for replies in keyed.values()]
    assert len(created) == 70

    stored = await stored_tasks(db, user)
    assert sorted(stored) == sorted(task["id"] for task in created)
    for task in created:
        assert as_served(stored[task["id"]]) == as_parsed(task)
    keys = await db.fetch("SELECT key FROM idempotency_keys WHERE user_id = $1", user)
    assert sorted(row["key"] for row in keys) == sorted(keyed)
    assert await db.fetchval("SELECT count(*) FROM users WHERE id = $1", user) == 1
    server_log.assert_no_errors()


# --- one task, many writers -------------------------------------------------------------------


async def test_a_hundred_toggles_of_one_task_each_see_their_own_version(
    http: httpx.AsyncClient, db: Any, user: str, server_log: ServerLog
) -> None:
    task = await create_task(http, user, title="flip")
    url = tasks_url(user, task["id"]) + "/complete"

    responses = await storm([http.patch(url) for _ in range(100)])

    assert [r.status_code for r in responses] == [200] * 100
    bodies = [r.json() for r in responses]
    # Each toggle is one step of a serial history: versions 2..101, each once, and each
    # answer's `completed` is the state after that many flips of an initially pending task.
    assert sorted(body["version"] for body in bodies) == list(range(2, 102))
    for response, body in zip(responses, bodies, strict=True):
        assert body["completed"] is (body["version"] % 2 == 0), body
        assert response.headers["ETag"] == f'"{body["version"]}"'
    last = max(bodies, key=lambda body: body["version"])
    row = (await stored_tasks(db, user))[task["id"]]
    assert as_served(row) == as_parsed(last)
    assert (row["version"], row["completed"]) == (101, False)  # 100 flips: pending again
    server_log.assert_no_errors()


async def test_if_match_writers_one_wins_then_each_retries_until_its_write_lands(
    http: httpx.AsyncClient, db: Any, user: str, server_log: ServerLog
) -> None:
    task = await create_task(http, user, title="contested")
    url = tasks_url(user, task["id"])

    # Fifty clients holding the same ETag: exactly one write lands.
    responses = await storm(
        [
            http.patch(url, json={"title": f"writer {i}"}, headers={"If-Match": '"1"'})
            for i in range(50)
        ]
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 412: 49}
    (winner,) = [r.json() for r in responses if r.status_code == 200]
    assert winner["version"] == 2
    for response in responses:
        if response.status_code == 412:
            assert response.headers["content-type"].startswith(PROBLEM)
            assert response.headers["ETag"] == '"2"'  # the current one, to retry with
    row = (await stored_tasks(db, user))[task["id"]]
    assert as_served(row) == as_parsed(winner)

    # The classic optimistic loop: on 412, retry at once with the ETag the 412 carried. With
    # n writers that is about n²/4 requests (50 writers took ~500-600 here, each 412 costing the
    # server two statements); 25 writers keep it to ~150-180.
    async def writer(i: int) -> tuple[int, httpx.Response]:
        tag, attempts = '"2"', 0
        while True:
            attempts += 1
            assert attempts <= 500, f"writer {i} starved"
            response = await http.patch(
                url, json={"title": f"chain {i}"}, headers={"If-Match": tag}
            )
            if response.status_code != 412:
                return attempts, response
            tag = response.headers["ETag"]

    results = await asyncio.gather(*(writer(i) for i in range(CHAIN)))

    assert [r.status_code for _, r in results] == [200] * CHAIN
    wins = [r.json() for _, r in results]
    for i, body in enumerate(wins):
        assert body["title"] == f"chain {i}"
    # Every write applied exactly once, one after another: consecutive versions from 3.
    assert sorted(body["version"] for body in wins) == list(range(3, 3 + CHAIN))
    last = max(wins, key=lambda body: body["version"])
    row = (await stored_tasks(db, user))[task["id"]]
    assert row["version"] == 2 + CHAIN
    assert as_served(row) == as_parsed(last)
    # Some writers met a 412 (none at all would mean the requests never overlapped).
    assert sum(attempts for attempts, _ in results) > CHAIN
    server_log.assert_no_errors()


# --- deletes racing with writes ---------------------------------------------------------------


async def test_deletes_racing_with_updates_and_toggles_leave_a_consistent_state(
    http: httpx.AsyncClient, db: Any, user: str, server_log: ServerLog
) -> None:
    tasks = await asyncio.gather(*(create_task(http, user, title=f"task {i}") for i in range(20)))
    doomed = {task["id"] for task in tasks[:10]}
    # Per task: 4 title updates and 4 toggles; the doomed ones also get 2 DELETEs each.
    plan: list[tuple[str, str, int]] = []
    for task in tasks:
        plan += [("update", task["id"], k) for k in range(4)] + [("toggle", task["id"], 0)] * 4
        if task["id"] in doomed:
            plan += [("delete", task["id"], 0)] * 2
    random.Random(4).shuffle(plan)

    def request(kind: str, task_id: str, k: int) -> Awaitable[httpx.Response]:
        url = tasks_url(user, task_id)
        if kind == "update":
            return http.patch(url, json={"title": f"{task_id} update {k}"})
        if kind == "toggle":
            return http.patch(url + "/complete")
        return http.delete(url)

    responses = await storm([request(*step) for step in plan])

    outcomes: dict[str, list[tuple[str, httpx.Response]]] = defaultdict(list)
    for (kind, task_id, _), response in zip(plan, responses, strict=True):
        allowed = {204, 404} if kind == "delete" else {200, 404}
        assert response.status_code in allowed, (kind, response.status_code, response.text)
        outcomes[task_id].append((kind, response))
    stored = await stored_tasks(db, user)
    assert sorted(stored) == sorted(task["id"] for task in tasks if task["id"] not in doomed)
    for task in tasks:
        results = outcomes[task["id"]]
        changed = [r.json() for kind, r in results if kind != "delete" and r.status_code == 200]
        # The writes that got 200 form a serial history from version 1, whenever the delete came.
        assert sorted(body["version"] for body in changed) == list(range(2, 2 + len(changed)))
        if task["id"] in doomed:
            deletes = sorted(r.status_code for kind, r in results if kind == "delete")
            assert deletes == [204, 404]
            continue
        assert all(r.status_code == 200 for _, r in results)  # nobody deleted this one
        row = stored[task["id"]]
        assert row["version"] == 1 + len(changed) == 9
        last = max(changed, key=lambda body: body["version"])
        assert as_served(row) == as_parsed(last)
        toggles = sum(kind == "toggle" for kind, _ in results)
        assert row["completed"] is (toggles % 2 == 1)
    server_log.assert_no_errors()


async def test_bulk_delete_of_completed_racing_with_toggles_and_creates_adds_up(
    http: httpx.AsyncClient, db: Any, user: str, server_log: ServerLog
) -> None:
    initial = await asyncio.gather(
        *(create_task(http, user, title=f"old {i}", completed=i % 2 == 0) for i in range(30))
    )
    new = [{"title": f"new {i}", "completed": i % 2 == 0} for i in range(20)]
    plan: list[tuple[str, Any]] = (
        [("purge", None)] * 3
        + [("toggle", task) for task in initial]
        + [("create", body) for body in new]
    )
    random.Random(5).shuffle(plan)

    def request(kind: str, subject: Any) -> Awaitable[httpx.Response]:
        if kind == "purge":
            return http.delete(tasks_url(user), params={"completed": "true"})
        if kind == "toggle":
            return http.patch(tasks_url(user, subject["id"]) + "/complete")
        return http.post(tasks_url(user), json=subject)

    responses = await storm([request(*step) for step in plan])

    purged = 0
    toggled: dict[str, httpx.Response] = {}
    created: list[dict[str, Any]] = []
    for (kind, subject), response in zip(plan, responses, strict=True):
        if kind == "purge":
            assert response.status_code == 200, response.text
            purged += response.json()["deleted"]
        elif kind == "toggle":
            assert response.status_code in (200, 404), response.text
            toggled[subject["id"]] = response
        else:
            assert response.status_code == 201, response.text
            created.append(response.json())
    stored = await stored_tasks(db, user)
    everything = initial + created
    gone = [task for task in everything if task["id"] not in stored]
    # Each deletion counted by exactly one purge, and nothing else vanished.
    assert purged == len(gone) == 50 - len(stored)
    for task in gone:
        toggle = toggled.get(task["id"])
        # Created during the storm, or purged before its toggle: it was created completed.
        if toggle is None or toggle.status_code == 404:
            assert task["completed"] is True
        else:  # toggled, then purged: the toggle made it completed
            assert toggle.json()["completed"] is True
    for task in initial:
        if task["id"] in stored:
            toggle = toggled[task["id"]]
            assert toggle.status_code == 200
            assert as_served(stored[task["id"]]) == as_parsed(toggle.json())
    for task in created:
        if task["id"] in stored:
            assert as_served(stored[task["id"]]) == as_parsed(task)
    stats = (await http.get(tasks_url(user) + "/stats")).json()
    assert stats["total"] == len(stored)
    server_log.assert_no_errors()


# --- a real deadlock --------------------------------------------------------------------------
#
# The bulk DELETE locks the user's completed tasks one by one, in the order of its scan. A
# second transaction ("holder", on its own connection) locks a task the DELETE reaches after
# another one; once the DELETE has locked that first task and waits for the holder, the
# holder asks for the first task: a lock cycle. The holder has a longer deadlock_timeout, so
# the API's backend (at the default 1 s) runs the deadlock check first and is the one aborted.
# PostgreSQL checks once per wait, so the holder must close the cycle within that second: it
# watches pg_locks every 5 ms for the DELETE to start waiting.


async def scan_ordered_pair(db: Any, tasks: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """Two of these tasks (created one after another, titles ascending) that every plan of the
    bulk DELETE visits in the same order: a sequential or bitmap scan goes by physical
    position (ctid), an index scan by created_at, updated_at or title, all of which follow
    creation order here. So a pair whose positions also follow creation order is safe.
    (PostgreSQL 15 picks a Seq Scan while the table is small, then an Index Scan on
    ix_tasks_user_id_title_id.)"""
    rows = await db.fetch(
        "SELECT id::text, ctid FROM tasks WHERE id = ANY($1::uuid[])", [t["id"] for t in tasks]
    )
    position = {row["id"]: tuple(row["ctid"]) for row in rows}
    ids = [task["id"] for task in tasks]
    for i, earlier in enumerate(ids):
        for later in ids[i + 1 :]:
            if position[earlier] < position[later]:
                return earlier, later
    return None


async def completed_tasks_with_an_ordered_pair(
    http: httpx.AsyncClient, db: Any, user: str, prefix: str
) -> tuple[list[dict[str, Any]], str, str]:
    """At least four completed tasks of `user`, two of which (see scan_ordered_pair) every plan
    of the bulk DELETE visits in creation order. A new row can land on a page before an older
    one (free space left by earlier tests), so tasks are added until such a pair exists."""
    tasks: list[dict[str, Any]] = []
    for i in range(16):
        # Zero-padded, so that title order is creation order.
        tasks.append(await create_task(http, user, title=f"{prefix} {i:02d}", completed=True))
        if len(tasks) >= 4 and (pair := await scan_ordered_pair(db, tasks)) is not None:
            return tasks, *pair
    raise AssertionError("16 tasks, and no two of them stored in creation order")


async def own_xid(connection: Any) -> str:
    """The id of the connection's open transaction (it has one once it locked a row)."""
    xid: str = await connection.fetchval(
        "SELECT transactionid::text FROM pg_locks"
        " WHERE pid = pg_backend_pid() AND locktype = 'transactionid' AND granted"
    )
    return xid


async def wait_for_a_waiter(db: Any, xid: str) -> None:
    """Until some backend waits for transaction `xid` to end (a row lock it holds)."""
    deadline = time.monotonic() + 20
    while not await db.fetchval(
        "SELECT count(*) FROM pg_locks"
        " WHERE locktype = 'transactionid' AND transactionid::text = $1 AND NOT granted",
        xid,
    ):
        assert time.monotonic() < deadline, "the DELETE never waited for the holder's lock"
        await asyncio.sleep(0.005)


async def lock(connection: Any, task_id: str) -> None:
    await connection.execute("SELECT 1 FROM tasks WHERE id = $1::uuid FOR UPDATE", task_id)


@pytest.fixture
async def holder(postgresql_server_url: str) -> AsyncIterator[Any]:
    connection = await asyncpg.connect(postgresql_server_url, timeout=10)
    # The API's backend runs the deadlock check after its 1 s and finds the cycle; the holder
    # would only after 5 s (and would then be the one aborted, failing the test quickly).
    await connection.execute("SET deadlock_timeout = '5s'")
    yield connection
    await connection.close()


@THROUGH_POOLER_TOO
async def test_a_real_deadlock_is_retried_inside_the_request(
    http: httpx.AsyncClient, db: Any, holder: Any, user: str, server_log: ServerLog
) -> None:
    """PostgreSQL aborts the API's DELETE as the deadlock victim; the data layer runs it again
    once the other transaction is gone, and the client only sees the right answer."""
    tasks, first, second = await completed_tasks_with_an_ordered_pair(http, db, user, "deadlock")
    request_id = uuid.uuid4().hex

    transaction = holder.transaction()
    await transaction.start()
    try:
        await lock(holder, second)
        purge = asyncio.create_task(
            http.delete(
                tasks_url(user), params={"completed": "true"}, headers={"X-Request-ID": request_id}
            )
        )
        await wait_for_a_waiter(db, await own_xid(holder))  # the DELETE holds `first` now
        await lock(holder, first)  # closes the cycle; granted once the DELETE is aborted
    finally:
        await transaction.rollback()  # the retried DELETE, waiting on the holder, goes on
    response = await purge

    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": len(tasks)}
    assert await stored_tasks(db, user) == {}
    retries = server_log.retries(request_id, DEADLOCK)
    assert len(retries) == 1, server_log.records()
    assert retries[0]["logger"] == "todo_api.database"
    server_log.assert_no_errors()


async def test_a_deadlock_that_keeps_coming_back_is_retried_a_bounded_number_of_times(
    http: httpx.AsyncClient, db: Any, holder: Any, user: str, server_log: ServerLog
) -> None:
    """Every attempt of the DELETE walks into a new deadlock: after CONFLICT_ATTEMPTS the
    request gives up (no endless retrying), having changed nothing, and says so."""
    tasks, first, second = await completed_tasks_with_an_ordered_pair(http, db, user, "again")
    request_id = uuid.uuid4().hex

    transaction = holder.transaction()
    await transaction.start()
    try:
        await lock(holder, second)  # for the whole test
        holder_xid = await own_xid(holder)
        purge = asyncio.create_task(
            http.delete(
                tasks_url(user), params={"completed": "true"}, headers={"X-Request-ID": request_id}
            )
        )
        for _ in range(CONFLICT_ATTEMPTS):
            # This attempt of the DELETE holds `first` and waits for `second`.
            await wait_for_a_waiter(db, holder_xid)
            # Locked inside a savepoint, so rolling back to it releases `first` again for the
            # next attempt, which then walks into the same cycle.
            await holder.execute("SAVEPOINT cycle")
            await lock(holder, first)
            await holder.execute("ROLLBACK TO SAVEPOINT cycle")
        response = await asyncio.wait_for(purge, timeout=20)
    finally:
        await transaction.rollback()

    retries = server_log.retries(request_id, DEADLOCK)
    assert len(retries) == CONFLICT_ATTEMPTS - 1, server_log.records()
    assert len(await stored_tasks(db, user)) == len(tasks)  # every attempt was rolled back whole
    after = await http.delete(tasks_url(user), params={"completed": "true"})
    assert after.json() == {"deleted": len(tasks)}  # and nothing was left locked
    assert response.headers["content-type"].startswith(PROBLEM)
    # A conflict that outlasts the retries is transient: 503 with Retry-After, not a 500.
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
