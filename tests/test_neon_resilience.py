"""What a serverless PostgreSQL does to a client: drops connections, sits behind a TLS pooler."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from pgbouncer import PgBouncer
from support import admin_url, count_rows, running, settings_for
from todo_api import repository
from todo_api.database import DatabaseUnavailable, create_engine, session_factory
from todo_api.models import TaskCreate
from todo_api.settings import Settings

pytestmark = pytest.mark.through_pooler
POSTGRES_BACKENDS = pytest.mark.parametrize("backend", ["postgresql", "pgbouncer"], indirect=True)


async def terminate_backends(database: str) -> int:
    """Kill every server connection to `database`, as a Neon compute suspending does."""
    dsn = make_url(admin_url()).set(drivername="postgresql")
    admin = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        killed = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()
    await asyncio.sleep(0.05)  # let the terminations land
    return len(killed)


@POSTGRES_BACKENDS
async def test_request_after_every_connection_was_terminated_succeeds(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    created = await client.post("/api/alice/tasks", json={"title": "before"})
    assert created.status_code == 201
    assert await terminate_backends(str(settings.database.url.database)) >= 1

    listing = await client.get("/api/alice/tasks")
    written = await client.post("/api/alice/tasks", json={"title": "after"})

    assert listing.status_code == 200, listing.text
    assert [task["title"] for task in listing.json()["items"]] == ["before"]
    assert written.status_code == 201, written.text


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_statements_whose_connection_died_before_commit_run_once_more(
    settings: Settings,
) -> None:
    # The pool's pre-ping cannot see a connection that dies after check-out; the data layer
    # retries those statements once, since nothing was committed.
    engine = create_engine(settings)
    try:
        async with session_factory(engine)() as session:
            await session.connection()  # checked out and pinged: now it dies
            await terminate_backends(str(settings.database.url.database))
            task = await repository.create_task(
                session, user_id="alice", data=TaskCreate(title="survives")
            )
        async with session_factory(engine)() as session:
            await session.connection()
            await terminate_backends(str(settings.database.url.database))
            page = await repository.list_tasks(session, user_id="alice", limit=10)
        assert [item.id for item in page.items] == [task.id]
        assert await count_rows(engine) == 1  # written exactly once
    finally:
        await engine.dispose()


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
