"""Two API processes on one PostgreSQL database behave as one service."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from support import PRODUCTION_CURSOR_SECRET, admin_execute, admin_url, served
from todo_api.platform.database import migrate

HEAD = migrate.head_revision()


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A brand-new PostgreSQL database with no schema at all."""
    name = f"todo_scale_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin_execute(f'CREATE DATABASE "{name}"'))
    yield make_url(admin_url()).set(database=name).render_as_string(hide_password=False)
    asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_two_processes_started_together_migrate_once_and_share_all_state(
    empty_database: str, tmp_path: Path
) -> None:
    env = {
        "APP_ENV": "production",
        "CURSOR_SECRET": PRODUCTION_CURSOR_SECRET,
        "DATABASE_URL": empty_database,
        "AUTO_MIGRATE": "true",
        "AUTH_MODE": "none",  # explicit: production requires tokens by default
    }
    # Both start on an empty database at the same moment: the advisory lock lets one migrate.
    with served(tmp_path, count=2, **env) as (first, second):
        a, b = httpx.Client(base_url=first.base_url), httpx.Client(base_url=second.base_url)
        created = [
            a.post("/api/alice/tasks", json={"title": f"t{i}"}).json()["id"] for i in range(5)
        ]
        assert b.get(f"/api/alice/tasks/{created[0]}").status_code == 200
        # A cursor issued by one process continues on the other.
        page = a.get("/api/alice/tasks", params={"limit": 2}).json()
        rest = b.get("/api/alice/tasks", params={"cursor": page["next_cursor"]}).json()
        seen = [task["id"] for task in page["items"] + rest["items"]]
        assert seen == created[::-1]
        # A change through B is what A reads next.
        assert b.patch(f"/api/alice/tasks/{created[1]}/complete").json()["completed"] is True
        assert a.get(f"/api/alice/tasks/{created[1]}").json()["completed"] is True
        assert b.get("/health/ready").json()["database"]["revision"] == HEAD
        logs = first.log() + second.log()
    assert logs.count(f"migrated database schema from empty to {HEAD}") == 1, logs
