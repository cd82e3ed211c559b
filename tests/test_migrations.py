"""The Alembic migrations build exactly the schema the models describe, on both backends, and the
database constraints back the API's rules even for rows written without the API.

Tests that need an empty database get their own: a scratch PostgreSQL database created on
TEST_DATABASE_URL's server (dropped afterwards) or a new SQLite file.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

from support import scratch_postgresql_database, settings_for
from todo_api.platform.database import migrate
from todo_api.platform.database.engine import create_engine
from todo_api.platform.database.types import UTCDateTime
from todo_api.settings import Settings
from todo_api.tables.lists import inbox_id

HEAD = migrate.head_revision()
ALL_TABLES = {
    "alembic_version", "users", "tasks", "idempotency_keys", "lists", "labels", "task_labels",
    "tombstones", "event_tickets", "event_watches", "change_pending",
}  # fmt: skip
TASKS_INDEX = "ix_tasks_user_id_created_at_id"
CLI_TIMEOUT = 30.0


def test_there_is_exactly_one_head_revision() -> None:
    assert migrate.head_revision() == HEAD


# --- scratch databases ---------------------------------------------------------------------------


@pytest.fixture
def empty_postgresql_url() -> Iterator[str]:
    """A brand-new PostgreSQL database with nothing in it."""
    with scratch_postgresql_database("todo_scratch") as url:
        yield url


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A brand-new database of this backend: no tables, no revision (SQLite: no file yet)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        with scratch_postgresql_database("todo_scratch") as url:
            yield url


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names()))


async def revision_of(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await migrate.current_revision(connection)


# --- (a) the migrations and the models agree -----------------------------------------------------


def _schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": migrate.include_object}
    )
    diff: list[Any] = compare_metadata(context, SQLModel.metadata)
    return diff


async def test_autogenerate_finds_no_difference_between_migrated_schema_and_models(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        diff = await connection.run_sync(_schema_diff)

    assert diff == []


async def test_migrated_schema_has_the_expected_tables_and_index(engine: AsyncEngine) -> None:
    def indexes(connection: Connection) -> set[str]:
        return {str(index["name"]) for index in sa.inspect(connection).get_indexes("tasks")}

    assert await table_names(engine) == ALL_TABLES
    async with engine.connect() as connection:
        found = await connection.run_sync(indexes)
    sort_indexes = {TASKS_INDEX, "ix_tasks_user_id_updated_at_id", "ix_tasks_user_id_title_id"}
    assert sort_indexes <= found
    # Trigram indexes for `q` exist on PostgreSQL only, led by the owner (btree_gin).
    assert not {"ix_tasks_title_trgm", "ix_tasks_description_trgm"} & found
    trigram = {"ix_tasks_user_id_title_trgm", "ix_tasks_user_id_description_trgm"}
    assert (trigram <= found) if engine.dialect.name == "postgresql" else not (trigram & found)


# --- (b) upgrade is idempotent -------------------------------------------------------------------


async def test_upgrade_of_a_migrated_database_is_a_no_op(engine: AsyncEngine) -> None:
    assert await migrate.upgrade(engine) == (HEAD, HEAD)
    assert await migrate.upgrade(engine) == (HEAD, HEAD)


async def test_upgrade_builds_an_empty_database_then_does_nothing_the_second_time(
    empty_database_url: str,
) -> None:
    engine = create_engine(settings_for(empty_database_url))
    try:
        assert await migrate.upgrade(engine) == (None, HEAD)
        assert await migrate.upgrade(engine) == (HEAD, HEAD)

        assert await table_names(engine) == ALL_TABLES
        async with engine.connect() as connection:
            versions = (
                await connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).all()
        assert [row[0] for row in versions] == [HEAD]
    finally:
        await engine.dispose()


async def test_migrations_downgrade_to_nothing_and_upgrade_again(empty_database_url: str) -> None:
    def downgrade_to_base(connection: Connection) -> None:
        config = migrate.alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    engine = create_engine(settings_for(empty_database_url))
    try:
        await migrate.upgrade(engine)
        async with engine.begin() as connection:
            await connection.run_sync(downgrade_to_base)

        assert await table_names(engine) == {"alembic_version"}
        assert await revision_of(engine) is None
        assert await migrate.upgrade(engine) == (None, HEAD)
    finally:
        await engine.dispose()


# --- (c) the CLI on a brand-new database ---------------------------------------------------------


def cli(cwd: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    ours = {name.lower() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.lower() not in ours}
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "todo_api", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def test_cli_upgrade_twice_on_a_new_database_then_check_passes(
    empty_database_url: str, tmp_path: Path
) -> None:
    first = cli(tmp_path, empty_database_url, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert f"database upgraded from empty to {HEAD}" in first.stdout

    second = cli(tmp_path, empty_database_url, "db", "upgrade")
    assert second.returncode == 0, second.stderr
    assert f"database already at revision {HEAD}; nothing to do" in second.stdout

    check = cli(tmp_path, empty_database_url, "db", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    assert f"migration revision: {HEAD} (latest: {HEAD})" in lines
    assert any(line.startswith("table users: indexes ") for line in lines), check.stdout
    tasks_line = next(line for line in lines if line.startswith("table tasks: indexes "))
    assert TASKS_INDEX in tasks_line
    assert lines[-1] == "database check passed"
    assert check.stderr == ""


def test_cli_check_on_an_unmigrated_database_fails_naming_each_problem(
    empty_database_url: str, tmp_path: Path
) -> None:
    if empty_database_url.startswith("sqlite"):
        sqlite3.connect(make_url(empty_database_url).database or "").close()  # an empty file

    result = cli(tmp_path, empty_database_url, "db", "check")

    assert result.returncode == 1, result.stdout
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem: ")]
    assert sorted(problems) == sorted(
        [
            f"problem: schema is at no revision, expected {HEAD}",
            "problem: table users is missing",
            "problem: table tasks is missing",
            "problem: table idempotency_keys is missing",
            "problem: table lists is missing",
            "problem: table labels is missing",
            "problem: table task_labels is missing",
            "problem: table tombstones is missing",
            "problem: table event_tickets is missing",
            "problem: table event_watches is missing",
            "problem: table change_pending is missing",
        ]
    )
    assert "run `todo-api db upgrade`" in result.stderr
    assert "database check passed" not in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_check_on_a_missing_sqlite_file_fails_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"

    result = cli(tmp_path, f"sqlite:///{missing}", "db", "check")

    assert result.returncode == 1, result.stdout
    assert "does not exist" in result.stderr
    assert "run `todo-api db upgrade`" in result.stderr
    assert not missing.exists()


# --- (d) replicas starting together --------------------------------------------------------------


async def test_concurrent_upgrades_on_postgresql_serialise_on_the_advisory_lock(
    empty_postgresql_url: str,
) -> None:
    engines = [create_engine(settings_for(empty_postgresql_url)) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate.upgrade(engine) for engine in engines))

        # Exactly one replica migrated; the others waited, then found the schema current.
        assert sorted(results, key=lambda pair: pair[0] or "") == [
            (None, HEAD),
            (HEAD, HEAD),
            (HEAD, HEAD),
            (HEAD, HEAD),
        ]
        assert await revision_of(engines[0]) == HEAD
        assert await table_names(engines[0]) == ALL_TABLES
    finally:
        for engine in engines:
            await engine.dispose()


# --- (e) the database constraints back the rules -------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
INSERT_USER = sa.text("INSERT INTO users (id, email, created_at) VALUES (:id, :email, :now)")
INSERT_TASK = sa.text(
    "INSERT INTO tasks (id, user_id, list_id, position, title, description, completed, "
    "created_at, updated_at) "
    "VALUES (:id, :user_id, :list_id, :position, :title, :description, false, :now, :now)"
).bindparams(
    sa.bindparam("id", type_=sa.Uuid()),
    sa.bindparam("list_id", type_=sa.Uuid()),
    sa.bindparam("now", type_=UTCDateTime()),
)
INSERT_USER = INSERT_USER.bindparams(sa.bindparam("now", type_=UTCDateTime()))
INSERT_INBOX = sa.text(
    "INSERT INTO lists (user_id, id, name, position, is_inbox, created_at, updated_at) "
    "VALUES (:user_id, :id, 'Inbox', 'a', true, :now, :now)"
).bindparams(sa.bindparam("id", type_=sa.Uuid()), sa.bindparam("now", type_=UTCDateTime()))


async def insert_user(engine: AsyncEngine, user_id: str, email: str | None = None) -> None:
    async with engine.begin() as connection:
        await connection.execute(INSERT_USER, {"id": user_id, "email": email, "now": NOW})
        await connection.execute(
            INSERT_INBOX, {"user_id": user_id, "id": inbox_id(user_id), "now": NOW}
        )


async def insert_task(
    engine: AsyncEngine, user_id: str = "alice", title: str = "Buy milk", description: Any = None
) -> uuid.UUID:
    task_id = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            INSERT_TASK,
            {
                "id": task_id,
                "user_id": user_id,
                "list_id": inbox_id(user_id),
                "position": f"b{task_id.hex}",
                "title": title,
                "description": description,
                "now": NOW,
            },
        )
    return task_id


async def count(engine: AsyncEngine, sql: str, **params: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(sa.text(sql), params) or 0)


async def test_sqlite_connections_enforce_foreign_keys(sqlite_server_url: str) -> None:
    # Off by default in SQLite; the engine turns it on for every connection.
    engine = create_engine(settings_for(sqlite_server_url))
    try:
        for _ in range(2):
            async with engine.connect() as connection:
                assert await connection.scalar(sa.text("PRAGMA foreign_keys")) == 1
    finally:
        await engine.dispose()


async def test_valid_rows_at_the_limits_are_accepted(engine: AsyncEngine) -> None:
    # The control for the rejections below: they fail because of the rule, not the statement.
    await insert_user(engine, "alice")
    await insert_task(engine, title="x" * 255, description="d" * 10_000)
    await insert_task(engine, title=" a ")

    assert await count(engine, "SELECT count(*) FROM tasks") == 2


@pytest.mark.parametrize("title", ["", "   "], ids=["empty", "blank"])
async def test_a_blank_title_is_rejected_by_the_database(engine: AsyncEngine, title: str) -> None:
    await insert_user(engine, "alice")

    with pytest.raises(sa.exc.IntegrityError, match="ck_tasks_title_length"):
        await insert_task(engine, title=title)

    assert await count(engine, "SELECT count(*) FROM tasks") == 0


async def test_a_title_over_255_characters_is_rejected_by_the_database(
    engine: AsyncEngine,
) -> None:
    await insert_user(engine, "alice")

    with pytest.raises(sa.exc.IntegrityError, match="ck_tasks_title_length"):
        await insert_task(engine, title="x" * 256)

    assert await count(engine, "SELECT count(*) FROM tasks") == 0


async def test_a_description_over_10000_characters_is_rejected_by_the_database(
    engine: AsyncEngine,
) -> None:
    await insert_user(engine, "alice")

    with pytest.raises(sa.exc.IntegrityError, match="ck_tasks_description_length"):
        await insert_task(engine, description="d" * 11_000)

    assert await count(engine, "SELECT count(*) FROM tasks") == 0


async def test_a_task_of_an_unknown_user_is_rejected_by_the_database(engine: AsyncEngine) -> None:
    with pytest.raises(sa.exc.IntegrityError) as caught:
        await insert_task(engine, user_id="nobody")

    reason = str(caught.value.orig)
    assert "fk_tasks_user_id_users" in reason or "FOREIGN KEY constraint failed" in reason
    assert await count(engine, "SELECT count(*) FROM tasks") == 0


async def test_an_empty_user_id_is_rejected_by_the_database(engine: AsyncEngine) -> None:
    with pytest.raises(sa.exc.IntegrityError, match="ck_users_id_length"):
        await insert_user(engine, "")


async def test_two_users_cannot_share_an_email(engine: AsyncEngine) -> None:
    await insert_user(engine, "alice", email="same@example.com")

    with pytest.raises(sa.exc.IntegrityError):
        await insert_user(engine, "bob", email="same@example.com")


async def test_deleting_a_user_deletes_their_tasks_and_only_theirs(engine: AsyncEngine) -> None:
    await insert_user(engine, "alice")
    await insert_user(engine, "bob")
    await insert_task(engine, "alice")
    await insert_task(engine, "alice")
    kept = await insert_task(engine, "bob")

    async with engine.begin() as connection:
        await connection.execute(sa.text("DELETE FROM users WHERE id = 'alice'"))

    assert await count(engine, "SELECT count(*) FROM tasks WHERE user_id = 'alice'") == 0
    assert await count(engine, "SELECT count(*) FROM tasks WHERE user_id = 'bob'") == 1
    async with engine.connect() as connection:
        remaining = await connection.scalar(
            sa.select(sa.column("id", sa.Uuid())).select_from(sa.table("tasks"))
        )
    assert remaining == kept
