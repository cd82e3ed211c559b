"""What a serverless PostgreSQL does to a client: drops connections, sits behind a TLS pooler."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pgbouncer import PgBouncer
from support import (
    admin_dsn,
    assert_problem,
    count_rows,
    running,
    settings_for,
    terminate_backends,
    wait_for_lock_waiter,
)
from tcp_proxy import TcpProxy
from todo_api.platform.database.errors import DatabaseUnavailable
from todo_api.settings import Settings

pytestmark = pytest.mark.through_pooler
POSTGRES_BACKENDS = pytest.mark.parametrize("backend", ["postgresql", "pgbouncer"], indirect=True)


@POSTGRES_BACKENDS
async def test_request_after_every_connection_was_terminated_succeeds(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    created = await client.post("/api/alice/tasks", json={"title": "before"})
    assert created.status_code == 201
    assert await terminate_backends(str(settings.database.url.database)) >= 1
    await asyncio.sleep(0.05)  # let the terminations land

    listing = await client.get("/api/alice/tasks")
    written = await client.post("/api/alice/tasks", json={"title": "after"})

    assert listing.status_code == 200, listing.text
    assert [task["title"] for task in listing.json()["items"]] == ["before"]
    assert written.status_code == 201, written.text


async def killed_while_waiting(
    database: str, lock: str, *lock_args: object, request: Awaitable[httpx.Response]
) -> httpx.Response:
    """`request`'s answer when its statement, waiting for a lock the test holds (`lock`), has
    its backend terminated by the server and the lock is then released."""
    admin = await asyncpg.connect(admin_dsn(database))
    try:
        locker = admin.transaction()
        await locker.start()
        await admin.execute(lock, *lock_args)
        answer = asyncio.ensure_future(request)
        waiting = await wait_for_lock_waiter(admin, database)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", waiting)
        await asyncio.sleep(0.3)  # the API hears of it and runs the statement again
        await locker.commit()
        return await answer
    finally:
        await admin.close()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_statement_the_server_aborted_runs_again_once_applied(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # The server kills the API's connection in the middle of a toggle (as a Neon compute
    # restart does) and says so (SQLSTATE 57P01): nothing was committed, so the data layer runs
    # the toggle again on a fresh connection. It must flip exactly once.
    task = (await client.post("/api/alice/tasks", json={"title": "flip me"})).json()
    response = await killed_while_waiting(
        str(settings.database.url.database),
        "SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE",
        uuid.UUID(task["id"]),
        request=client.patch(f"/api/alice/tasks/{task['id']}/complete"),
    )
    assert response.status_code == 200, response.text
    assert (response.json()["completed"], response.json()["version"]) == (True, 2)
    stored = (await client.get(f"/api/alice/tasks/{task['id']}")).json()
    assert (stored["completed"], stored["version"]) == (True, 2)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_create_whose_connection_the_server_killed_is_written_once(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    # An uncommitted insert of the same user row makes the create wait; killed there, it runs
    # again and writes its task exactly once.
    response = await killed_while_waiting(
        str(settings.database.url.database),
        "INSERT INTO users (id, created_at) VALUES ('alice', now())",
        request=client.post("/api/alice/tasks", json={"title": "once"}),
    )
    assert response.status_code == 201, response.text
    assert await count_rows(engine) == 1


async def test_a_write_whose_connection_vanished_without_an_answer_is_not_run_twice(
    postgresql_server_url: str,
) -> None:
    # The connection disappears while a toggle waits (no error from the server: the toggle may
    # still commit once the lock is released). Running it again could flip the task twice; the
    # client gets a 503 instead, and the task is flipped at most once.
    url = make_url(postgresql_server_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    through_proxy = url.set(host="127.0.0.1", port=proxy.port)
    user = f"vanish-{uuid.uuid4().hex}"  # the session database is not emptied for this test
    admin = await asyncpg.connect(admin_dsn(str(url.database)))
    try:
        async with running(
            settings_for(through_proxy.render_as_string(hide_password=False))
        ) as client:
            task = (await client.post(f"/api/{user}/tasks", json={"title": "flip once"})).json()
            locker = admin.transaction()
            await locker.start()
            await admin.execute(
                "SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", uuid.UUID(task["id"])
            )
            toggle = asyncio.create_task(client.patch(f"/api/{user}/tasks/{task['id']}/complete"))
            await wait_for_lock_waiter(admin, str(url.database))
            proxy.cut()
            response = await toggle
            await locker.commit()
            proxy.restore()
            assert_problem(response, 503)
            await asyncio.sleep(0.2)  # the orphaned UPDATE, if it runs, commits now
            stored = (await client.get(f"/api/{user}/tasks/{task['id']}")).json()
    finally:
        await admin.close()
        await proxy.close()
    assert stored["version"] in (1, 2), stored
    assert stored["completed"] is (stored["version"] == 2), stored


def verified_url(base: str, bouncer: PgBouncer, host: str, rootcert: Path, mode: str) -> str:
    url = make_url(base).set(
        host=host, port=bouncer.port, query={"sslmode": mode, "sslrootcert": str(rootcert)}
    )
    return url.render_as_string(hide_password=False)


@pytest.mark.parametrize("mode", ["verify-full", "verify-ca"])
async def test_certificate_verification_accepts_the_servers_certificate(
    postgresql_server_url: str, pgbouncer: PgBouncer, mode: str
) -> None:
    url = verified_url(postgresql_server_url, pgbouncer, "localhost", pgbouncer.certificate, mode)
    async with running(settings_for(url, db_pool_mode="transaction")) as client:
        response = await client.get("/api/alice/tasks")
    assert response.status_code == 200


async def test_certificate_verification_rejects_an_unknown_authority(
    postgresql_server_url: str, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    other_ca = PgBouncer("127.0.0.1", 1)  # only to mint a second, unrelated certificate
    other_ca.make_certificate()
    try:
        url = verified_url(
            postgresql_server_url, pgbouncer, "localhost", other_ca.certificate, "verify-full"
        )
        settings = settings_for(url, db_pool_mode="transaction", db_connect_deadline=0)
        with pytest.raises(DatabaseUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            async with running(settings):
                pass
    finally:
        other_ca.stop()


async def test_plaintext_to_a_tls_only_pooler_is_refused_with_the_reason(
    postgresql_server_url: str, pgbouncer: PgBouncer
) -> None:
    url = make_url(postgresql_server_url).set(
        host="127.0.0.1", port=pgbouncer.port, query={"sslmode": "disable"}
    )
    settings = settings_for(url.render_as_string(hide_password=False), db_connect_deadline=0)
    with pytest.raises(DatabaseUnavailable, match="SSL required"):
        async with running(settings):
            pass


@pytest.mark.parametrize("backend", ["pgbouncer"], indirect=True)
async def test_the_pooler_setting_turns_off_prepared_statement_reuse(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    # Many different statements, many times, on few server connections: with reuse on,
    # PgBouncer in transaction mode fails with `prepared statement ... already exists`.
    assert settings.behind_transaction_pooler(settings.database)
    created = [
        (await client.post("/api/alice/tasks", json={"title": f"t{i}"})).json() for i in range(20)
    ]
    results = await asyncio.gather(
        *(client.get(f"/api/alice/tasks/{task['id']}") for task in created),
        *(client.patch(f"/api/alice/tasks/{task['id']}/complete") for task in created),
        *(client.get("/api/alice/tasks", params={"limit": 5}) for _ in range(20)),
    )
    assert {response.status_code for response in results} == {200}


def test_a_neon_pooler_host_is_detected_without_configuration() -> None:
    neon = "postgresql://u:p@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/neondb"
    direct = "postgresql://u:p@ep-cool-darkness-123456.us-east-2.aws.neon.tech/neondb"
    pooled_settings = settings_for(f"{neon}?sslmode=require&channel_binding=require")
    assert pooled_settings.behind_transaction_pooler(pooled_settings.database)
    direct_settings = settings_for(direct, database_url_direct=direct)
    assert not direct_settings.behind_transaction_pooler(direct_settings.database)
    forced = settings_for(direct, db_pool_mode="transaction")
    assert forced.behind_transaction_pooler(forced.database)


async def test_migrations_use_the_direct_url(postgresql_server_url: str) -> None:
    # DATABASE_URL works, DATABASE_URL_DIRECT points nowhere: start-up must try the direct one.
    unreachable = make_url(postgresql_server_url).set(host="127.0.0.1", port=1)
    settings = settings_for(
        postgresql_server_url,
        database_url_direct=unreachable.render_as_string(hide_password=False),
        auto_migrate=True,
        db_connect_deadline=0,
    )
    with pytest.raises(DatabaseUnavailable, match=r"cannot migrate .* on 127\.0\.0\.1:1"):
        async with running(settings):
            pass
