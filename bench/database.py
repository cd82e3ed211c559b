"""The benchmark's own PostgreSQL database: create, migrate, seed (set-based SQL), sample, drop."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
BIG_USER = "bench-big"

# Users are bench-000001 ... ; created_at steps back one second per task so every task of a
# user has a distinct sort key (the keyset order is then fully determined by created_at).
SEED_USERS = """
INSERT INTO users (id, email, created_at)
SELECT 'bench-' || lpad(g::text, 6, '0'), NULL, now() FROM generate_series(1, $1::int) AS g
ON CONFLICT (id) DO NOTHING
"""
SEED_TASKS = """
INSERT INTO tasks (id, user_id, title, description, completed, created_at, updated_at)
SELECT gen_random_uuid(), 'bench-' || lpad((1 + g % $1::int)::text, 6, '0'),
       'seeded task ' || g, CASE WHEN g % 3 = 0 THEN 'description of task ' || g END,
       g % 4 = 0, ts, ts
FROM generate_series(1, $2::int) AS g,
     LATERAL (SELECT now() - make_interval(secs => g + $3::int)) AS t(ts)
"""
SEED_BIG_USER = """
WITH _ AS (
    INSERT INTO users (id, email, created_at) VALUES ($1, NULL, now())
    ON CONFLICT (id) DO NOTHING
)
INSERT INTO tasks (id, user_id, title, description, completed, created_at, updated_at)
SELECT gen_random_uuid(), $1, 'big user task ' || g, NULL, g % 2 = 0, ts, ts
FROM generate_series(1, $2::int) AS g,
     LATERAL (SELECT now() - make_interval(secs => g)) AS t(ts)
"""


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class BenchDatabase:
    """A fresh `todo_bench_<time>_<random>` database next to the one in `admin_url`."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"todo_bench_{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(3)}"
        self.url = _with_database(admin_url, self.name)
        self.created = False

    # --- lifecycle -------------------------------------------------------------------------

    def create(self) -> None:
        async def go() -> None:
            admin = await asyncpg.connect(self.admin_url)
            try:
                await admin.execute(f'CREATE DATABASE "{self.name}"')
            finally:
                await admin.close()

        asyncio.run(go())
        self.created = True

    def drop(self) -> None:
        if not self.created:
            return

        async def go() -> None:
            admin = await asyncpg.connect(self.admin_url)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await admin.close()

        asyncio.run(go())
        self.created = False

    def migrate(self, env: dict[str, str], cwd: Path) -> None:
        """`python -m todo_api db upgrade`, exactly as an operator would run it."""
        completed = subprocess.run(
            [sys.executable, "-m", "todo_api", "db", "upgrade"],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"migration failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}"
            )

    # --- data ------------------------------------------------------------------------------

    async def _execute(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        connection = await asyncpg.connect(self.url)
        try:
            for sql, args in statements:
                await connection.execute(sql, *args)
        finally:
            await connection.close()

    def seed(self, users: int, tasks: int, *, offset: int = 0) -> None:
        """`tasks` tasks spread evenly over users bench-000001..`users`."""
        asyncio.run(self._execute((SEED_USERS, (users,)), (SEED_TASKS, (users, tasks, offset))))

    def seed_big_user(self, tasks: int) -> None:
        asyncio.run(self._execute((SEED_BIG_USER, (BIG_USER, tasks))))

    def analyze(self) -> None:
        asyncio.run(self._execute(("VACUUM ANALYZE users", ()), ("VACUUM ANALYZE tasks", ())))

    def count_tasks(self) -> int:
        async def go() -> int:
            connection = await asyncpg.connect(self.url)
            try:
                count: int = await connection.fetchval("SELECT count(*) FROM tasks")
                return count
            finally:
                await connection.close()

        return asyncio.run(go())

    def write_samples(self, directory: Path, *, sample: int = 10_000) -> None:
        """ids.txt (`user_id task_id`, random tasks) and users.txt, read by the Lua script."""

        async def go() -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
            connection = await asyncpg.connect(self.url)
            try:
                ids = await connection.fetch(
                    "SELECT user_id, id FROM tasks ORDER BY random() LIMIT $1", sample
                )
                users = await connection.fetch(
                    "SELECT DISTINCT user_id FROM tasks ORDER BY user_id"
                )
                return ids, users
            finally:
                await connection.close()

        ids, users = asyncio.run(go())
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ids.txt").write_text("".join(f"{r['user_id']} {r['id']}\n" for r in ids))
        (directory / "users.txt").write_text("".join(f"{r['user_id']}\n" for r in users))

    def server_version(self) -> str:
        async def go() -> str:
            connection = await asyncpg.connect(self.admin_url)
            try:
                version: str = await connection.fetchval("SELECT version()")
                return version
            finally:
                await connection.close()

        return asyncio.run(go())


def admin_url_from_env() -> str:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_URL)
