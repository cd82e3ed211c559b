"""Specifications that keep the foundation honest: keyset pagination over every sort with
duplicate and NULL keys, bounded statement shapes, fields declared once (read-only fields,
completed_at), and the defects found in review (each test failed on the code before it).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from support import IN_CI, app_of, assert_problem, count_rows, create_task, running
from todo_api.platform.database.database import Database
from todo_api.platform.database.engine import create_engine
from todo_api.settings import ConfigError, Settings, load_settings
from todo_api.tables.lists import inbox_id
from todo_api.tasks.repository import listing_shapes
from todo_api.tasks.sorting import ALLOWED_SORTS, TaskSortField

WALKER = "walker"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
# Few distinct values, so that keys collide; None only where the column allows it.
TIMES = [T0, T0 + timedelta(hours=1), T0 + timedelta(days=1)]
TITLES = ["a", "b", "B", "a b", "ä"]


# --- keyset pagination ---------------------------------------------------------------------------

rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(TITLES),
        st.sampled_from(TIMES),
        st.sampled_from(TIMES),
        st.one_of(st.none(), st.sampled_from(TIMES)),
    ),
    min_size=1,
    max_size=9,
)


async def _seed(engine: AsyncEngine, rows: list[tuple[str, datetime, datetime, Any]]) -> None:
    """Tasks with chosen (colliding) keys, written directly: the server picks its own times."""
    sqlite = engine.dialect.name == "sqlite"
    async with engine.begin() as connection:
        await connection.execute(sa.text("DELETE FROM tasks"))
        await connection.execute(sa.text("DELETE FROM users"))
        await connection.execute(
            sa.text("INSERT INTO users (id, created_at) VALUES (:id, :now)"),
            {"id": WALKER, "now": _stored(T0, sqlite)},
        )
        inbox = inbox_id(WALKER)
        await connection.execute(
            sa.text(
                "INSERT INTO lists (user_id, id, name, position, is_inbox, created_at, "
                "updated_at, version) VALUES (:user, :id, 'Inbox', 'a', true, :now, :now, 1)"
            ),
            {"user": WALKER, "id": inbox.hex if sqlite else inbox, "now": _stored(T0, sqlite)},
        )
        for index, (title, created, updated, completed_at) in enumerate(rows):
            task_id = uuid.uuid4()
            # Priority and due repeat (duplicate keys) and due is missing on a third (NULLs).
            due = None if index % 3 == 0 else DUES[index % len(DUES)]
            await connection.execute(
                sa.text(
                    "INSERT INTO tasks (id, user_id, list_id, position, priority, due_date, "
                    "due_sort, title, completed, completed_at, created_at, updated_at, version) "
                    "VALUES (:id, :user, :list, :position, :priority, :due_date, :due_sort, "
                    ":title, :completed, :completed_at, :created, :updated, 1)"
                ),
                {
                    "id": task_id.hex if sqlite else task_id,
                    "user": WALKER,
                    "list": inbox.hex if sqlite else inbox,
                    "position": f"a{index:04d}V",
                    "priority": index % 4 if index % 2 else 0,
                    "due_date": due.date() if due else None,
                    "due_sort": _stored(due, sqlite),
                    "title": title,
                    "completed": completed_at is not None,
                    "completed_at": _stored(completed_at, sqlite),
                    "created": _stored(created, sqlite),
                    "updated": _stored(updated, sqlite),
                },
            )


DUES = [datetime(2026, 12, day, 23, 59, 59, 999999, tzinfo=UTC) for day in (1, 1, 2, 3)]


def _stored(moment: datetime | None, sqlite: bool) -> Any:
    # SQLite keeps UTC times as text in SQLAlchemy's format; PostgreSQL takes them as they are.
    if moment is None or not sqlite:
        return moment
    return moment.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


async def _walk(client: httpx.AsyncClient, sort: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(50):
        params: dict[str, Any] = {"sort": sort, "limit": limit}
        if sort.removeprefix("-") == "position":  # manual order is within one list
            params["list_id"] = "inbox"
        if cursor:
            params["cursor"] = cursor
        response = await client.get(f"/api/{WALKER}/tasks", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the walk did not end")


def _key(item: dict[str, Any], field: str) -> Any:
    if field == "due":
        return None if item["due"] is None else item["due"]["date"]
    if field == "priority":
        return ["none", "low", "medium", "high"].index(item["priority"])
    return item[field]


def _expected_nulls(sort: str, items: list[dict[str, Any]]) -> None:
    """NULL keys come last ascending and first descending (due: last both ways); ties are
    broken by id."""
    field = sort.removeprefix("-")
    keys = [_key(item, field) for item in items]
    nulls = [key is None for key in keys]
    if sort.startswith("-") and field != "due":
        assert nulls == sorted(nulls, reverse=True), keys
    else:
        assert nulls == sorted(nulls), keys
    values = [key for key in keys if key is not None]
    if field not in ("title", "position"):  # text order: the database's (C for positions)
        assert values == sorted(values, reverse=sort.startswith("-")), keys


@examples(
    max_examples=8 if IN_CI else 12,  # CI: its 15-minute budget
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=rows_strategy)
def test_every_sort_walks_each_task_exactly_once_with_duplicate_and_null_keys(
    settings: Settings, rows: list[tuple[str, datetime, datetime, Any]]
) -> None:
    async def check() -> None:
        # Each example runs on an event loop of its own, so it gets engines of its own.
        engine = create_engine(settings)
        try:
            await _seed(engine, rows)
        finally:
            await engine.dispose()
        async with running(settings) as client:
            for sort in ALLOWED_SORTS:
                whole = await _walk(client, sort, 200)  # one page: the database's own order
                assert len(whole) == len(rows)
                _expected_nulls(sort, whole)
                for limit in (1, 2, 3):
                    walked = await _walk(client, sort, limit)
                    assert [item["id"] for item in walked] == [item["id"] for item in whole], (
                        sort,
                        limit,
                    )

    asyncio.run(check())


def test_there_is_a_nullable_sort_key_so_the_null_paths_are_walked() -> None:
    # The NULL cursor shapes above are only exercised while some sort key can be NULL.
    assert any(field.value.nullable for field in TaskSortField)


# --- statement shapes -----------------------------------------------------------------------------

FILTERS: dict[str, list[Any]] = {
    "completed": [None, "true", "false"],
    "q": [None, "milk"],
    "updated_since": [None, "2020-01-01T00:00:00Z"],
    # The task model's filters, all at once (each is NULL-neutral like the others).
    "more": [None, "due=overdue&priority=high&labels_any=0b6a1f8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"],
}


async def test_listing_statements_are_bounded_by_sorts_and_cursors_not_filters(
    client: httpx.AsyncClient,
) -> None:
    """Every combination of filters, every sort, first pages and pages after a cursor: the
    statements sent are exactly the shapes `listing_shapes` enumerates (plus one COUNT), so a
    new filter adds none, and the compiled-statement cache cannot grow past them."""
    for n in range(3):
        await create_task(client, WALKER, title=f"milk {n}", completed=n == 1)
    database: Database = app_of(client).state.database
    seen: set[str] = set()
    database.observe_statements(lambda sql, _seconds: seen.add(sql))

    combinations = 0
    for values in itertools.product(*FILTERS.values()):
        query = {name: value for name, value in zip(FILTERS, values, strict=True) if value}
        if "more" in query:
            query |= dict(part.split("=") for part in query.pop("more").split("&"))
        for sort in ALLOWED_SORTS:
            params = {**query, "sort": sort, "limit": 1, "include_total": "true"}
            if sort.removeprefix("-") == "position":
                params["list_id"] = "inbox"
            first = await client.get(f"/api/{WALKER}/tasks", params=params)
            assert first.status_code == 200, first.text
            cursor = first.json()["next_cursor"]
            if cursor:
                after = await client.get(
                    f"/api/{WALKER}/tasks", params={**params, "cursor": cursor}
                )
                assert after.status_code == 200, after.text
            combinations += 1

    shapes = list(listing_shapes())
    nullable_sorts = sum(1 for field in TaskSortField if field.value.nullable)
    assert len(shapes) == len(TaskSortField) * 2 * 2 + nullable_sorts * 2
    assert combinations == 3 * 2 * 2 * 2 * len(ALLOWED_SORTS)
    # Cursors after a NULL key need open tasks at a page end: a subset of the shapes is seen,
    # never more than them. (The tombstone purge may run meanwhile, in the background: its
    # statements, which read no task, are not the listing's.)
    listing = {sql for sql in seen if sql.lstrip().startswith("SELECT") and "FROM tasks" in sql}
    assert len(TaskSortField) * 2 * 2 <= len(listing) <= len(shapes) + 1
    if database.dialect == "postgresql":
        compiled = database.executor.statements  # type: ignore[attr-defined]
        # + the creates and the user provisioning (4), and the purge's statements (4)
        assert len(compiled) <= len(shapes) + 1 + 4 + 4


# --- fields declared once ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["version", "id", "user_id", "created_at", "completed_at"])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_server_set_fields_in_a_body_are_refused_as_read_only(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, field: str
) -> None:
    task = await create_task(client, WALKER)
    url = f"/api/{WALKER}/tasks" + ("" if method == "POST" else f"/{task['id']}")
    response = await client.request(method, url, json={"title": "x", field: task[field] or 3})
    body = assert_problem(response, 422)
    assert body["errors"] == [
        {
            "location": "body",
            "field": field,
            "message": f"{field} is read-only; it is set by the server",
            "type": "extra_forbidden",
        }
    ]
    assert await count_rows(engine) == 1
    stored = (await client.get(f"/api/{WALKER}/tasks/{task['id']}")).json()
    assert stored == task


async def test_completed_at_follows_completion_through_every_write(
    client: httpx.AsyncClient,
) -> None:
    created = await create_task(client, WALKER, completed=True)
    assert created["completed_at"] == created["created_at"]
    url = f"/api/{WALKER}/tasks/{created['id']}"

    reopened = (await client.patch(f"{url}/complete")).json()
    assert (reopened["completed"], reopened["completed_at"]) == (False, None)
    done = (await client.patch(f"{url}/complete")).json()
    assert done["completed"] is True and done["completed_at"] == done["updated_at"]
    # Already completed: completing again keeps the first completion time.
    again = (await client.patch(url, json={"completed": True, "title": "renamed"})).json()
    assert again["completed_at"] == done["completed_at"]
    replaced = (await client.put(url, json={"title": "open again"})).json()
    assert (replaced["completed"], replaced["completed_at"]) == (False, None)
    set_done = (await client.patch(f"{url}/complete", json={"completed": True})).json()
    assert set_done["completed_at"] == set_done["updated_at"]
    assert (await client.get(url)).json() == set_done


# --- defects found in review -------------------------------------------------------------------


async def test_reused_idempotency_key_names_the_header_in_errors(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    url = f"/api/{WALKER}/tasks"
    headers = {"Idempotency-Key": "order-1"}
    first = await client.post(url, json={"title": "one"}, headers=headers)
    assert first.status_code == 201
    reused = await client.post(url, json={"title": "two"}, headers=headers)
    body = assert_problem(reused, 422)
    [error] = body["errors"]
    assert error["location"] == "header"
    assert error["field"] == "Idempotency-Key"
    assert error["type"] == "idempotency_key_reused"
    assert "different request body" in error["message"]
    assert await count_rows(engine) == 1


async def test_an_expired_idempotency_key_can_be_used_again(
    settings: Settings, engine: AsyncEngine
) -> None:
    # A TTL of about a second: the second request comes after the first claim expired.
    async with running(settings.model_copy(update={"idempotency_ttl_hours": 0.0003})) as client:
        url = f"/api/{WALKER}/tasks"
        headers = {"Idempotency-Key": "daily"}
        first = await client.post(url, json={"title": "one"}, headers=headers)
        await asyncio.sleep(1.3)
        second = await client.post(url, json={"title": "two"}, headers=headers)
        assert (first.status_code, second.status_code) == (201, 201)
        assert "idempotent-replayed" not in second.headers
        assert first.json()["id"] != second.json()["id"]
        replay = await client.post(url, json={"title": "two"}, headers=headers)
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == second.json()
    assert await count_rows(engine) == 2
    assert await count_rows(engine, "idempotency_keys") == 1


PRODUCTION = {"app_env": "production", "database_url": "sqlite:///x.db", "auth_mode": "none"}


@pytest.mark.parametrize(
    "secret",
    [None, "todo-api-default-cursor-secret", "change-me-to-a-long-random-string", "short"],
)
def test_production_refuses_a_missing_default_or_weak_cursor_secret(secret: str | None) -> None:
    overrides = dict(PRODUCTION) if secret is None else {**PRODUCTION, "cursor_secret": secret}
    with pytest.raises(ConfigError) as refused:
        load_settings(**overrides)
    message = str(refused.value)
    assert "CURSOR_SECRET" in message
    if secret is not None:
        assert secret not in message  # the value itself is never echoed


def test_production_starts_with_a_cursor_secret_of_its_own() -> None:
    secret = "k" * 32
    loaded = load_settings(**PRODUCTION, cursor_secret=secret)
    assert loaded.cursor_secret.get_secret_value() == secret
    # Development keeps a built-in one, so the first command needs no configuration.
    assert load_settings(app_env="development").cursor_secret.get_secret_value()
