"""The reference server: the ceiling the API is measured against, not a competitor.

Starlette + an asyncpg pool, the same SQL statements as `todo_api.repository` and the same JSON
fields, without an ORM, dependency injection or response models. Only the routes the benchmark
drives exist (get, list, create, patch, toggle) plus `/health/ready`.

Differences kept on purpose (they are part of what the ceiling measures):
- every request is one statement in autocommit (one round trip); create provisions the user in
  a CTE of the task INSERT, as the API's create does on PostgreSQL;
- no pre-ping on pool checkout, and no reset on release: asyncpg's pool by default sends
  `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` whenever a connection goes
  back, a round trip before `pool.fetchrow()` returns (with 2 ms each way, 4 ms on every
  request); the reference never changes session state, so it skips it (an open transaction
  would still be rolled back);
- its list cursor is trivial (`<created_at in epoch microseconds>.<id hex>`) but the keyset SQL
  is the API's: `(created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC LIMIT n + 1`.

Behind PgBouncer in transaction mode (`DB_POOL_MODE=transaction`, the API's variable) it
turns asyncpg's statement cache off (`statement_cache_size=0`) as the API does, so both pay the
same unnamed-statement round trips (`python -m bench --latency` measures through PgBouncer).

Run: `DATABASE_URL=postgresql://... uvicorn bench.reference:create_app --factory`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

COLUMNS = "id, user_id, title, description, completed, created_at, updated_at"
GET = f"SELECT {COLUMNS} FROM tasks WHERE tasks.id = $1 AND tasks.user_id = $2"
LIST_FIRST = (
    f"SELECT {COLUMNS} FROM tasks WHERE tasks.user_id = $1 "
    "ORDER BY tasks.created_at DESC, tasks.id DESC LIMIT $2"
)
LIST_AFTER = (
    f"SELECT {COLUMNS} FROM tasks WHERE tasks.user_id = $1 "
    "AND (tasks.created_at, tasks.id) < ($2, $3) "
    "ORDER BY tasks.created_at DESC, tasks.id DESC LIMIT $4"
)
CREATE = (
    "WITH provisioned AS (INSERT INTO users (id, email, created_at) VALUES ($2, NULL, $6) "
    "ON CONFLICT (id) DO NOTHING) "
    "INSERT INTO tasks (id, user_id, title, description, completed, created_at, updated_at) "
    f"VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING {COLUMNS}"
)
TOGGLE = (
    "UPDATE tasks SET completed = NOT tasks.completed, updated_at = $3 "
    f"WHERE tasks.id = $1 AND tasks.user_id = $2 RETURNING {COLUMNS}"
)
EDITABLE = ("title", "description", "completed")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
POOL_SIZE = 20  # the API's DB_POOL_SIZE + DB_MAX_OVERFLOW defaults (20 + 0)


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _task(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "user_id": row["user_id"],
        "title": row["title"],
        "description": row["description"],
        "completed": row["completed"],
        "created_at": _time(row["created_at"]),
        "updated_at": _time(row["updated_at"]),
    }


def _json(body: object, status: int = 200) -> Response:
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return Response(payload, status_code=status, media_type="application/json")


def _problem(status: int, detail: str) -> Response:
    body = json.dumps({"status": status, "detail": detail})
    return Response(body, status_code=status, media_type="application/problem+json")


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    return f"{(created_at - EPOCH) // MICROSECOND}.{task_id.hex}"


def decode_cursor(token: str) -> tuple[datetime, uuid.UUID]:
    micros, _, task_hex = token.partition(".")
    return EPOCH + int(micros) * MICROSECOND, uuid.UUID(hex=task_hex)


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def _body(request: Request) -> dict[str, Any] | None:
    raw = await request.body()
    if not raw:
        return None
    data = json.loads(raw)
    return data if isinstance(data, dict) else None


def _valid_changes(data: Mapping[str, Any]) -> bool:
    if not set(data) <= set(EDITABLE):
        return False
    title = data.get("title", "x")
    if not isinstance(title, str) or not 1 <= len(title.strip()) <= 255:
        return False
    if not isinstance(data.get("description", ""), str | None):
        return False
    return isinstance(data.get("completed", False), bool)


async def get_task(request: Request) -> Response:
    user_id: str = request.path_params["user_id"]
    task_id: uuid.UUID = request.path_params["task_id"]
    row = await _pool(request).fetchrow(GET, task_id, user_id)
    return _json(_task(row)) if row else _problem(404, f"No task {task_id} for this user")


async def list_tasks(request: Request) -> Response:
    user_id: str = request.path_params["user_id"]
    try:
        limit = int(request.query_params.get("limit", "50"))
        cursor = request.query_params.get("cursor")
        after = decode_cursor(cursor) if cursor else None
    except ValueError:
        return _problem(400, "bad limit or cursor")
    if not 1 <= limit <= 200:
        return _problem(422, "limit must be 1-200")
    pool = _pool(request)
    if after is None:
        rows = await pool.fetch(LIST_FIRST, user_id, limit + 1)
    else:
        rows = await pool.fetch(LIST_AFTER, user_id, after[0], after[1], limit + 1)
    items = rows[:limit]
    more = len(rows) > limit
    next_cursor = encode_cursor(items[-1]["created_at"], items[-1]["id"]) if more else None
    return _json({"items": [_task(row) for row in items], "next_cursor": next_cursor})


async def create_task(request: Request) -> Response:
    user_id: str = request.path_params["user_id"]
    data = await _body(request)
    if data is None or "title" not in data or not _valid_changes(data):
        return _problem(422, "invalid task")
    now = datetime.now(UTC)
    row = await _pool(request).fetchrow(
        CREATE,
        uuid.uuid4(),
        user_id,
        data["title"].strip(),
        data.get("description"),
        data.get("completed", False),
        now,
        now,
    )
    if row is None:  # ON CONFLICT (id) DO NOTHING: only a repeated uuid4
        return _problem(409, "task id already taken")
    task = _task(row)
    location = f"/api/{user_id}/tasks/{task['id']}"
    response = _json(task, status=201)
    response.headers["Location"] = location
    return response


async def patch_task(request: Request) -> Response:
    user_id: str = request.path_params["user_id"]
    task_id: uuid.UUID = request.path_params["task_id"]
    data = await _body(request) or {}
    if not _valid_changes(data):
        return _problem(422, "invalid changes")
    if not data:
        row = await _pool(request).fetchrow(GET, task_id, user_id)
    else:
        # Column names come from EDITABLE only (checked above), never from the client.
        names = [name for name in EDITABLE if name in data]
        values = [data[name].strip() if name == "title" else data[name] for name in names]
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=4))
        statement = (
            f"UPDATE tasks SET {sets}, updated_at = $3 "
            f"WHERE tasks.id = $1 AND tasks.user_id = $2 RETURNING {COLUMNS}"
        )
        row = await _pool(request).fetchrow(statement, task_id, user_id, datetime.now(UTC), *values)
    return _json(_task(row)) if row else _problem(404, f"No task {task_id} for this user")


async def complete_task(request: Request) -> Response:
    user_id: str = request.path_params["user_id"]
    task_id: uuid.UUID = request.path_params["task_id"]
    data = await _body(request)
    now = datetime.now(UTC)
    pool = _pool(request)
    if data is None:
        row = await pool.fetchrow(TOGGLE, task_id, user_id, now)
    elif set(data) == {"completed"} and isinstance(data["completed"], bool):
        statement = (
            "UPDATE tasks SET completed = $4, updated_at = $3 "
            f"WHERE tasks.id = $1 AND tasks.user_id = $2 RETURNING {COLUMNS}"
        )
        row = await pool.fetchrow(statement, task_id, user_id, now, data["completed"])
    else:
        return _problem(422, "body must be {'completed': bool}")
    return _json(_task(row)) if row else _problem(404, f"No task {task_id} for this user")


async def ready(request: Request) -> Response:
    await _pool(request).fetchval("SELECT 1")
    # The harness reads this to check that the pooler mode was honoured.
    cache = request.app.state.pool_options.get("statement_cache_size", 100)
    return _json({"status": "ok", "statement_cache_size": cache})


def pool_options(pool_mode: str) -> dict[str, Any]:
    """asyncpg options for DB_POOL_MODE: no named prepared statements behind a pooler."""
    if pool_mode.strip().lower() == "transaction":
        # PgBouncer hands each transaction to any server connection, where another client's
        # named statement may already exist: unnamed statements only, as the API does.
        return {"statement_cache_size": 0}
    return {}


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to send (see the module docstring)."""


def create_app() -> Starlette:
    dsn = os.environ["DATABASE_URL"]
    options = pool_options(os.environ.get("DB_POOL_MODE", "session"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, reset=_keep_session, **options
        )
        app.state.pool = pool
        app.state.pool_options = options
        try:
            yield
        finally:
            await pool.close()

    tasks = "/api/{user_id}/tasks"
    routes = [
        Route("/health/ready", ready),
        Route(tasks, list_tasks, methods=["GET"]),
        Route(tasks, create_task, methods=["POST"]),
        Route(tasks + "/{task_id:uuid}", get_task, methods=["GET"]),
        Route(tasks + "/{task_id:uuid}", patch_task, methods=["PATCH"]),
        Route(tasks + "/{task_id:uuid}/complete", complete_task, methods=["PATCH"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
