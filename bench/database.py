"""The benchmark's own PostgreSQL database: create, migrate, seed (set-based SQL), sample, drop."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from todo_api.tables.lists import inbox_id

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
BIG_USER = "bench-big"
# The schema the data is first loaded into: the one before the task model (lists, labels,
# due dates, priority, manual order), so that every run goes through the real migration 0004
# (`todo_api db upgrade`, batched), timed, with a reader of another user watching for stalls.
SEED_REVISION = "0003"
INBOX_POSITION = "a000000001V"  # todo_api.platform.positions.ranked(1)
LABELS_PER_USER = 5
# Search words, chosen per task from a hash of its number so that no user is favoured:
# common (~22% of titles, as the issue's `report`), middling (~2%) and rare (~0.02%).
SEARCH_WORDS = {"common": "report", "middling": "invoice", "rare": "dentist"}
_TITLE = (
    "'seeded task ' || g || CASE WHEN abs(hashtext(g::text)) % 10000 < 2200 THEN ' report' "
    "WHEN abs(hashtext(g::text)) % 10000 < 2400 THEN ' invoice' "
    "WHEN abs(hashtext(g::text)) % 10000 < 2402 THEN ' dentist' ELSE '' END"
)

# Users are bench-000001 ... ; created_at steps back one second per task so every task of a
# user has a distinct sort key (the keyset order is then fully determined by created_at).
SEED_USERS = """
INSERT INTO users (id, email, created_at)
SELECT 'bench-' || lpad(g::text, 6, '0'), NULL, now() FROM generate_series(1, $1::int) AS g
ON CONFLICT (id) DO NOTHING
"""
# --- revision 0003 (before the task model): what the migration starts from -----------------
SEED_TASKS_0003 = f"""
INSERT INTO tasks (id, user_id, title, description, completed, completed_at, created_at,
                   updated_at)
SELECT gen_random_uuid(), 'bench-' || lpad((1 + g % $1::int)::text, 6, '0'),
       {_TITLE}, CASE WHEN g % 3 = 0 THEN 'description of task ' || g END,
       g % 4 = 0, CASE WHEN g % 4 = 0 THEN ts END, ts, ts
FROM generate_series(1 + $3::int, $2::int + $3::int) AS g,
     LATERAL (SELECT now() - make_interval(secs => g)) AS t(ts)
"""
SEED_BIG_USER_0003 = f"""
WITH _ AS (
    INSERT INTO users (id, email, created_at) VALUES ($1, NULL, now())
    ON CONFLICT (id) DO NOTHING
)
INSERT INTO tasks (id, user_id, title, description, completed, completed_at, created_at,
                   updated_at)
SELECT gen_random_uuid(), $1, replace({_TITLE}, 'seeded task', 'big user task'), NULL,
       g % 2 = 0, CASE WHEN g % 2 = 0 THEN ts END, ts, ts
FROM generate_series(1, $2::int) AS g,
     LATERAL (SELECT now() - make_interval(secs => g)) AS t(ts)
"""
# Priority and due date from a hash `h` (see DECORATE_TASKS); inserted rows get them inline.
_DUE_DAY = "CASE WHEN (h / 4) % 10 < 4 THEN current_date + ((h / 40) % 21 - 14) END"
_DECORATION = (
    "h % 4, due.day, CASE WHEN due.day IS NOT NULL THEN "
    "(due.day + time '23:59:59.999999') AT TIME ZONE 'UTC' END"
)
# --- head: every task in its user's inbox, with a position -----------------------------------
# Inbox ids are uuid5(INBOX_NAMESPACE, user_id), computed in Python (todo_api.tables.lists).
SEED_INBOXES = f"""
INSERT INTO lists (user_id, id, name, color, position, is_inbox, created_at, updated_at)
SELECT u, i, 'Inbox', NULL, '{INBOX_POSITION}', true, now(), now()
FROM unnest($1::text[], $2::uuid[]) AS x(u, i)
ON CONFLICT DO NOTHING
"""
# Positions: `ranked` keys (`a` + 9 digits + `V`) numbered by the global task number, so they
# are unique in each list and follow the newest-first order (older tasks, larger numbers);
# they sort below every `tail` key the API gives a create (`b...`).
SEED_TASKS = f"""
INSERT INTO tasks (id, user_id, list_id, position, title, description, completed,
                   completed_at, priority, due_date, due_sort, created_at, updated_at)
SELECT gen_random_uuid(), u.id, lists.id, 'a' || lpad(g::text, 9, '0') || 'V',
       {_TITLE}, CASE WHEN g % 3 = 0 THEN 'description of task ' || g END,
       g % 4 = 0, CASE WHEN g % 4 = 0 THEN ts END, {_DECORATION}, ts, ts
FROM generate_series(1 + $3::int, $2::int + $3::int) AS g
CROSS JOIN LATERAL (SELECT 'bench-' || lpad((1 + g % $1::int)::text, 6, '0')) AS u(id)
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => g)) AS t(ts)
CROSS JOIN LATERAL (SELECT abs(hashtext(g::text || 'd'))) AS hash(h)
CROSS JOIN LATERAL (SELECT {_DUE_DAY}) AS due(day)
JOIN lists ON lists.user_id = u.id AND lists.is_inbox
"""
SEED_BIG_USER = f"""
INSERT INTO tasks (id, user_id, list_id, position, title, description, completed,
                   completed_at, priority, due_date, due_sort, created_at, updated_at)
SELECT gen_random_uuid(), $1, $3::uuid, 'a' || lpad(g::text, 9, '0') || 'V',
       replace({_TITLE}, 'seeded task', 'big user task'), NULL,
       g % 2 = 0, CASE WHEN g % 2 = 0 THEN ts END, {_DECORATION}, ts, ts
FROM generate_series(1, $2::int) AS g
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => g)) AS t(ts)
CROSS JOIN LATERAL (SELECT abs(hashtext(g::text || 'd'))) AS hash(h)
CROSS JOIN LATERAL (SELECT {_DUE_DAY}) AS due(day)
"""
# --- the task model's data: priorities, all-day due dates, labels ---------------------------
# From a hash of the task id: priority none/low/medium/high ~25% each; 40% have a due date,
# all-day, from 14 days ago to 6 days ahead (so ~2/3 of those are past: overdue when open).
# Only tasks not decorated yet (version 1, priority 0, no due): the migrated rows (rows
# seeded in head's shape get the same distribution inline, from a hash of their number; the
# ~30% of them with neither may be decorated here too, which keeps the distribution).
# `due_sort` is the end of the due day "as if UTC" (todo_api.tasks.schemas.due_columns).
DECORATE_TASKS = """
UPDATE tasks SET priority = d.p, due_date = d.day,
       due_sort = CASE WHEN d.day IS NOT NULL THEN
           (d.day + time '23:59:59.999999') AT TIME ZONE 'UTC' END
FROM (
    SELECT id, h % 4 AS p,
           CASE WHEN (h / 4) % 10 < 4 THEN current_date + ((h / 40) % 21 - 14) END AS day
    FROM (SELECT id, abs(hashtext(id::text)) AS h FROM tasks
          WHERE version = 1 AND priority = 0 AND due_date IS NULL) AS hashed
) AS d
WHERE tasks.id = d.id AND (d.p <> 0 OR d.day IS NOT NULL)
"""
SEED_LABELS = f"""
INSERT INTO labels (user_id, id, name, name_key, color, created_at, updated_at)
SELECT users.id, gen_random_uuid(), 'label ' || k, 'label ' || k,
       '#' || lpad(to_hex(k * 3000000), 6, '0'), now(), now()
FROM users, generate_series(1, {LABELS_PER_USER}) AS k
ON CONFLICT DO NOTHING
"""
# Half the tasks carry one label, 15% a second one (task_labels' primary key dedups).
SEED_TASK_LABELS = f"""
INSERT INTO task_labels (user_id, task_id, label_id)
SELECT tasks.user_id, tasks.id, labels.id
FROM (SELECT user_id, id, abs(hashtext(id::text || 'l')) AS h FROM tasks) AS tasks
JOIN LATERAL (VALUES (1 + h % {LABELS_PER_USER}, h % 100 < 50),
                     (1 + (h / 7) % {LABELS_PER_USER}, h % 100 < 15)) AS pick(k, wanted)
    ON pick.wanted
JOIN labels ON labels.user_id = tasks.user_id AND labels.name_key = 'label ' || pick.k
ON CONFLICT DO NOTHING
"""
COUNTS_WRONG = """
SELECT count(*) FROM users
WHERE task_count <> (SELECT count(*) FROM tasks WHERE tasks.user_id = users.id)
"""
# Alembic's upgrade to one revision, in a subprocess with the API's settings (DATABASE_URL).
_UPGRADE_TO = """
import asyncio
from alembic import command
from todo_api.platform.database import migrate
from todo_api.platform.database.engine import create_engine
from todo_api.settings import load_settings

async def go():
    engine = create_engine(load_settings(), direct=True)
    try:
        async with engine.begin() as connection:
            def run(sync):
                config = migrate.alembic_config()
                config.attributes["connection"] = sync
                command.upgrade(config, "{revision}")
            await connection.run_sync(run)
    finally:
        await engine.dispose()

asyncio.run(go())
"""
# The reader that watches the migration: another user's page, as the API's plain list reads.
STALL_PROBE = (
    "SELECT id, title FROM tasks WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT 50"
)


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

    def migrate(self, env: dict[str, str], cwd: Path, *, revision: str | None = None) -> None:
        """`python -m todo_api db upgrade`, exactly as an operator would run it; with
        `revision`, Alembic's upgrade to that revision (the CLI only goes to head)."""
        argv = [sys.executable, "-m", "todo_api", "db", "upgrade"]
        if revision is not None:
            argv = [sys.executable, "-c", _UPGRADE_TO.format(revision=revision)]
        completed = subprocess.run(
            argv, env=env, cwd=cwd, capture_output=True, text=True, check=False
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"migration failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}"
            )

    def migrate_watched(
        self, env: dict[str, str], cwd: Path, *, interval: float = 0.05
    ) -> dict[str, Any]:
        """`todo_api db upgrade` (to head) timed, while another connection reads another
        user's page every `interval` seconds: the longest such read is the worst stall a
        reader of an unrelated user saw. A read still waiting after 0.2 s has its blockers
        (pg_blocking_pids) recorded with their statements."""
        return asyncio.run(self._migrate_watched(env, cwd, interval))

    async def _migrate_watched(
        self, env: dict[str, str], cwd: Path, interval: float
    ) -> dict[str, Any]:
        reader = await asyncpg.connect(self.url)
        watcher = await asyncpg.connect(self.url)
        users = [r["id"] for r in await reader.fetch("SELECT id FROM users ORDER BY id")]
        probes = [users[i * len(users) // 4] for i in range(4)] if users else [BIG_USER]
        await reader.fetch(STALL_PROBE, probes[0])  # prepared before the clock starts
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "todo_api", "db", "upgrade",
            env=env | {"LOG_LEVEL": "INFO"}, cwd=cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        reads: list[tuple[float, float]] = []  # (seconds since start, read's duration)
        blocked: list[dict[str, Any]] = []
        waiting = asyncio.create_task(process.communicate())
        reader_pid = reader.get_server_pid()

        async def watch(since: float) -> None:
            await asyncio.sleep(0.2)
            rows = await watcher.fetch(
                "SELECT pid, wait_event_type, wait_event, state, left(query, 300) AS query "
                "FROM pg_stat_activity WHERE pid = ANY(pg_blocking_pids($1))",
                reader_pid,
            )
            blocked.append({"at_s": round(since, 2), "blockers": [dict(r) for r in rows]})

        n = 0
        while not waiting.done():
            t0 = time.perf_counter()
            watch_task = asyncio.create_task(watch(t0 - started))
            await reader.fetch(STALL_PROBE, probes[n % len(probes)])
            t1 = time.perf_counter()
            watch_task.cancel()
            reads.append((t0 - started, t1 - t0))
            n += 1
            await asyncio.sleep(max(0.0, interval - (t1 - t0)))
        stdout, stderr = await waiting
        elapsed = time.perf_counter() - started
        await reader.close()
        await watcher.close()
        output = (stdout + stderr).decode(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(f"migration failed ({process.returncode}):\n{output}")
        worst = max(reads, key=lambda r: r[1]) if reads else (0.0, 0.0)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(reads)]
        durations = sorted(r[1] for r in reads)
        return {
            "seconds": round(elapsed, 2),
            "reads": len(reads),
            "max_read_ms": round(1000 * worst[1], 1),
            "max_read_at_s": round(worst[0], 2),
            "p99_read_ms": round(1000 * durations[int(0.99 * (len(durations) - 1))], 1)
            if durations
            else None,
            "max_gap_ms": round(1000 * max(gaps), 1) if gaps else None,
            "slow_reads": [
                {"at_s": round(a, 2), "ms": round(1000 * d, 1)} for a, d in reads if d > 0.1
            ],
            "blocked": blocked,
            "log": [line for line in output.splitlines() if line.strip()][-20:],
        }

    # --- data ------------------------------------------------------------------------------

    async def _execute(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        connection = await asyncpg.connect(self.url)
        try:
            for sql, args in statements:
                await connection.execute(sql, *args)
        finally:
            await connection.close()

    def seed_0003(self, users: int, tasks: int, *, offset: int = 0) -> None:
        """Revision 0003's shape: `tasks` tasks spread evenly over bench-000001..`users`."""
        asyncio.run(
            self._execute((SEED_USERS, (users,)), (SEED_TASKS_0003, (users, tasks, offset)))
        )

    def seed_big_user_0003(self, tasks: int) -> None:
        asyncio.run(self._execute((SEED_BIG_USER_0003, (BIG_USER, tasks))))

    def seed(self, users: int, tasks: int, *, offset: int = 0) -> None:
        """Head's shape: `tasks` tasks spread evenly over bench-000001..`users`, each user
        with an inbox (created here when missing), tasks numbered after `offset`."""
        names = [f"bench-{i:06d}" for i in range(1, users + 1)]
        asyncio.run(
            self._execute(
                (SEED_USERS, (users,)),
                (SEED_INBOXES, (names, [inbox_id(name) for name in names])),
                (SEED_TASKS, (users, tasks, offset)),
            )
        )

    def seed_big_user(self, tasks: int) -> None:
        asyncio.run(
            self._execute(
                (SEED_USERS.replace("'bench-' || lpad(g::text, 6, '0')", "$2::text"),
                 (1, BIG_USER)),
                (SEED_INBOXES, ([BIG_USER], [inbox_id(BIG_USER)])),
                (SEED_BIG_USER, (BIG_USER, tasks, inbox_id(BIG_USER))),
            )
        )  # fmt: skip

    def decorate(self) -> dict[str, int]:
        """Priorities, due dates and labels (head's schema); only rows not decorated yet.
        Returns counts, and checks that the triggers kept users.task_count right."""

        async def go() -> dict[str, int]:
            connection = await asyncpg.connect(self.url)
            try:
                await connection.execute(DECORATE_TASKS)
                await connection.execute(SEED_LABELS)
                await connection.execute(SEED_TASK_LABELS)
                wrong = await connection.fetchval(COUNTS_WRONG)
                if wrong:
                    raise RuntimeError(f"{wrong} users have a wrong task_count")
                row = await connection.fetchrow(
                    "SELECT (SELECT count(*) FROM tasks) AS tasks,"
                    " (SELECT count(*) FROM tasks WHERE due_date IS NOT NULL) AS with_due,"
                    " (SELECT count(*) FROM labels) AS labels,"
                    " (SELECT count(*) FROM task_labels) AS task_labels,"
                    " (SELECT count(*) FROM lists) AS lists"
                )
                assert row is not None
                return dict(row)
            finally:
                await connection.close()

        return asyncio.run(go())

    def analyze(self) -> None:
        asyncio.run(self._execute(*((f"VACUUM ANALYZE {table}", ()) for table in self.tables())))

    def tables(self) -> list[str]:
        async def go() -> list[str]:
            connection = await asyncpg.connect(self.url)
            try:
                rows = await connection.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename IN ('users', 'tasks', 'lists', 'labels', 'task_labels')"
                )
                return [r["tablename"] for r in rows]
            finally:
                await connection.close()

        return asyncio.run(go())

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
        """Files the Lua script reads: ids.txt (`user_id task_id`, random tasks), users.txt;
        labels.txt (`user_id label,label,...`: all of a user's labels, for list-labels);
        filtered.txt (`user_id label_id`: a label that user has on open overdue tasks, for
        list-filtered, so that its page is never empty); search.txt (`user_id word`)."""

        async def go() -> dict[str, list[asyncpg.Record]]:
            connection = await asyncpg.connect(self.url)
            try:
                found = {
                    "ids": await connection.fetch(
                        "SELECT user_id, id FROM tasks ORDER BY random() LIMIT $1", sample
                    ),
                    "users": await connection.fetch(
                        "SELECT DISTINCT user_id FROM tasks ORDER BY user_id"
                    ),
                    "labels": await connection.fetch(
                        "SELECT user_id, string_agg(id::text, ',' ORDER BY name_key) AS ids "
                        "FROM labels WHERE user_id LIKE 'bench-0%' GROUP BY user_id "
                        "ORDER BY user_id"
                    ),
                    # With today's date in UTC (the seeded users' zone), as the API sees it.
                    "filtered": await connection.fetch(
                        "SELECT DISTINCT tl.user_id, tl.label_id FROM task_labels tl "
                        "JOIN tasks t ON t.user_id = tl.user_id AND t.id = tl.task_id "
                        "WHERE NOT t.completed AND t.due_date < (now() AT TIME ZONE 'UTC')::date "
                        "AND tl.user_id LIKE 'bench-0%' ORDER BY 1, 2"
                    ),
                }
                return found
            finally:
                await connection.close()

        found = asyncio.run(go())
        directory.mkdir(parents=True, exist_ok=True)
        lines = {
            "ids": [f"{r['user_id']} {r['id']}" for r in found["ids"]],
            "users": [r["user_id"] for r in found["users"]],
            "labels": [f"{r['user_id']} {r['ids']}" for r in found["labels"]],
            "filtered": [f"{r['user_id']} {r['label_id']}" for r in found["filtered"]],
            # Every seeded user with each word: most users have no `dentist` at all (an empty
            # page is still a search of that user's trigram entries).
            "search": [
                f"{r['user_id']} {word}"
                for r in found["users"]
                if r["user_id"].startswith("bench-0")
                for word in SEARCH_WORDS.values()
            ],
        }
        for name, rows in lines.items():
            (directory / f"{name}.txt").write_text("".join(f"{row}\n" for row in rows))

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
