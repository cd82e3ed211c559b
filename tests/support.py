"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from todo_api.app import create_app
from todo_api.settings import Settings, load_settings

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PROBLEM = "application/problem+json"
# Production refuses to start without a cursor secret of its own.
PRODUCTION_CURSOR_SECRET = "test-cursor-secret-of-at-least-32-bytes"


def admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)


def admin_dsn(database: str | None = None) -> str:
    """TEST_DATABASE_URL for asyncpg itself (no SQLAlchemy driver suffix), optionally naming
    another database on the same server."""
    url = make_url(admin_url()).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


async def admin_execute(statement: str) -> None:
    """Run one statement (CREATE/DROP DATABASE …) on the server at TEST_DATABASE_URL."""
    connection = await asyncpg.connect(admin_dsn(), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def backends_of(database: str) -> int:
    """How many server connections `database` has (the admin connection is to another)."""
    admin = await asyncpg.connect(admin_dsn(), timeout=10)
    try:
        count: int = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
        )
    finally:
        await admin.close()
    return count


async def terminate_backends(database: str) -> int:
    """Kill every server connection to `database`, as a Neon compute suspending does; how many.

    Returns as soon as PostgreSQL has signalled them: the backends are still on their way out.
    """
    admin = await asyncpg.connect(admin_dsn(), timeout=10)
    try:
        killed = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()
    return len(killed)


@contextmanager
def scratch_postgresql_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on TEST_DATABASE_URL's server, dropped afterwards.

    An unreachable server fails the test in CI (CI=true) and skips it elsewhere.
    """
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(admin_execute(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as error:
        message = f"PostgreSQL at TEST_DATABASE_URL is unreachable: {type(error).__name__}: {error}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield make_url(admin_url()).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"app_env": "test", "database_url": url, "auto_migrate": False}
    return load_settings(**(values | overrides))


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A started app (lifespan run) and an HTTP client talking to it in process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def app_of(client: httpx.AsyncClient) -> FastAPI:
    app: FastAPI = client.app  # type: ignore[attr-defined]
    return app


async def count_rows(engine: AsyncEngine, table: str = "tasks") -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


async def stored_task(engine: AsyncEngine, task_id: str) -> dict[str, Any] | None:
    """The task row as the database holds it, or None."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                sa.text("SELECT * FROM tasks WHERE id = :id"),
                {"id": _db_uuid(engine, task_id)},
            )
        ).one_or_none()
    return dict(row._mapping) if row else None


def _db_uuid(engine: AsyncEngine, task_id: str) -> Any:
    # SQLite stores UUIDs as 32 hex characters; PostgreSQL has a native uuid type.
    parsed = uuid.UUID(task_id)
    return parsed.hex if engine.dialect.name == "sqlite" else parsed


async def create_task(
    client: httpx.AsyncClient, user: str = "alice", **fields: Any
) -> dict[str, Any]:
    """POST a task for `user` (title "Buy milk" unless given); asserts 201, returns the task."""
    response = await client.post(
        f"/api/{quote(user, safe='')}/tasks", json={"title": "Buy milk", **fields}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@dataclass(frozen=True)
class Snapshot:
    """Everything a rejected request could have changed."""

    tasks: int
    users: int
    rows: dict[str, dict[str, Any] | None]


async def snapshot(engine: AsyncEngine, *task_ids: str) -> Snapshot:
    rows = {task_id: await stored_task(engine, task_id) for task_id in task_ids}
    return Snapshot(await count_rows(engine, "tasks"), await count_rows(engine, "users"), rows)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    return body


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**variables: str) -> dict[str, str]:
    """os.environ without any variable the service reads, plus `variables`."""
    ours = {name.lower() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.lower() not in ours}
    env["PYTHONUNBUFFERED"] = "1"
    return env | variables


@contextmanager
def served(cwd: Path, *args: str, count: int = 1, **variables: str) -> Iterator[list[Server]]:
    """`count` processes of `todo-api serve`, all started at once, each answering /health;
    SIGTERM when done."""
    servers = [_start(cwd, args, variables) for _ in range(count)]
    try:
        # Generous: `--workers N` spawns fresh interpreters, slow to start on a busy machine.
        deadline = time.monotonic() + 90
        for server in servers:
            while not server.healthy():
                assert server.process.poll() is None, f"server exited early:\n{server.log()}"
                assert time.monotonic() < deadline, f"server not up in time:\n{server.log()}"
                time.sleep(0.05)
        yield servers
    finally:
        for server in servers:
            server.stop()


def _start(cwd: Path, args: tuple[str, ...], variables: dict[str, str]) -> Server:
    port = free_port()
    log_path = cwd / f"server-{port}.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "todo_api", "serve", "--port", str(port), *args],
            cwd=cwd,
            env=clean_env(**variables),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return Server(process=process, base_url=f"http://127.0.0.1:{port}", log_path=log_path)


@dataclass
class Server:
    process: subprocess.Popen[str]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL, as a crash or an out-of-memory kill: no shutdown code runs at all."""
        self.process.kill()
        self.process.wait(timeout=10)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False


async def wait_for_lock_waiter(admin: asyncpg.Connection, database: str) -> int:
    """The pid of the backend in `database` that waits for a row lock (the API's statement)."""
    for _ in range(500):
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            database,
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError("the API's statement never waited for the lock")


# --- headless Chromium (Debian's package; .ci/run installs it) ------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]


def render(chromium: str, url: str, workdir: Path) -> tuple[str, list[str]]:
    """The page's DOM after scripts ran, and the URLs of every request the page made."""
    netlog = workdir / "netlog.json"
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}",
         f"--log-net-log={netlog}", "--dump-dom", url],
        capture_output=True, text=True, timeout=90, check=True,
    )  # fmt: skip
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    origin = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
    requested = [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job and event.get("params", {}).get("initiator") == origin
    ]
    return result.stdout, requested
