"""Logs and request ids: what an operator reads when something goes wrong.

Logging is set up exactly as the CLI does (JSON lines) into a buffer; each line is parsed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import Request
from sqlalchemy.engine import make_url

from log_capture import LogCapture, captured_logs
from support import PRODUCTION_CURSOR_SECRET, app_of, assert_problem, running, settings_for
from todo_api.settings import Settings

GENERATED_ID = re.compile(r"[0-9a-f]{32}")
PASSWORD = "s3cr3t-pw-XYZ"


@pytest.fixture
def logs(settings: Settings) -> Iterator[LogCapture]:
    with captured_logs(settings) as capture:
        yield capture


async def create_task(client: httpx.AsyncClient, title: str = "a task") -> dict[str, Any]:
    response = await client.post("/api/alice/tasks", json={"title": title})
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


# --- the access line ------------------------------------------------------------------------------


async def test_one_access_line_per_request_with_route_template_status_and_duration(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    task = await create_task(client)
    response = await client.get(
        f"/api/alice/tasks/{task['id']}",
        headers={"X-Request-ID": "req-1", "Authorization": "Bearer not-logged-token"},
    )
    assert response.status_code == 200

    line = logs.access("req-1")
    assert line["level"] == "INFO"
    assert line["method"] == "GET"
    assert line["route"] == "/api/{user_id}/tasks/{task_id}"
    assert line["status"] == 200
    assert 0 < line["duration_ms"] < 10_000
    assert line["client"] == "127.0.0.1"
    assert "query" not in line
    assert {"time", "logger", "message", "pid"} <= line.keys()
    # Neither the raw path (user and task ids) nor credentials reach the log.
    text = logs.text()
    assert task["id"] not in text
    assert "not-logged-token" not in text
    assert "a task" not in text  # no bodies


async def test_cursor_in_the_query_string_is_cut_short(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    for title in ("one", "two"):
        await create_task(client, title)
    cursor = (await client.get("/api/alice/tasks", params={"limit": 1})).json()["next_cursor"]
    assert len(cursor) > 20
    response = await client.get(
        "/api/alice/tasks",
        params={"limit": 1, "cursor": cursor},
        headers={"X-Request-ID": "page-2"},
    )
    assert response.status_code == 200

    line = logs.access("page-2")
    assert line["route"] == "/api/{user_id}/tasks"
    assert line["query"] == f"limit=1&cursor={cursor[:8]}…"
    assert cursor not in logs.text()


async def test_unknown_routes_are_logged_with_a_placeholder(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    response = await client.get("/wp-admin/secret-probe", headers={"X-Request-ID": "scan"})
    assert_problem(response, 404)
    line = logs.access("scan")
    assert line["route"] == "<unmatched>"
    assert line["status"] == 404
    assert "secret-probe" not in line["message"]


async def test_access_log_can_be_turned_off_or_leave_out_probes(
    settings: Settings,
) -> None:
    quiet_probes = settings.model_copy(update={"access_log_health": False})
    async with running(quiet_probes) as client:
        with captured_logs(quiet_probes) as logs:
            await client.get("/health", headers={"X-Request-ID": "probe"})
            await client.get("/health/ready", headers={"X-Request-ID": "ready"})
            await client.get("/metrics", headers={"X-Request-ID": "scrape"})
            await client.get("/api/alice/tasks", headers={"X-Request-ID": "api"})
        assert logs.of_request("probe") == logs.of_request("ready") == []
        assert logs.of_request("scrape") == []
        assert logs.access("api")["status"] == 200

    silent = settings.model_copy(update={"access_log": False})
    async with running(silent) as client:
        with captured_logs(silent) as logs:
            await client.get("/api/alice/tasks")
            await client.get("/health")
        assert [r for r in logs.records() if r["logger"] == "todo_api.access"] == []


async def test_console_format_is_readable_and_carries_the_request_id(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    with captured_logs(settings, log_format="console") as logs:
        await client.get("/api/alice/tasks", headers={"X-Request-ID": "console-1"})
    [line] = [line for line in logs.text().splitlines() if "todo_api.access" in line]
    assert re.fullmatch(
        r"\S+ \S+ INFO    todo_api\.access \[console-1\]: GET /api/\{user_id\}/tasks 200 "
        r"[0-9.]+ ms",
        line,
    ), line


def test_json_is_the_default_in_production_and_console_elsewhere() -> None:
    production = Settings(
        app_env="production",
        database_url="postgresql://u@h/d",
        auth_mode="none",
        cursor_secret=PRODUCTION_CURSOR_SECRET,
    )
    assert production.logs_as_json
    assert not Settings(app_env="development").logs_as_json
    assert Settings(app_env="development", log_format="json").logs_as_json
    assert not production.model_copy(update={"log_format": "console"}).logs_as_json


# --- request ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("client-chosen-id.42", True),
        ("x" * 128, True),
        ("x" * 129, False),  # too long
        ("has space", False),
        ("tab\there", False),
        ("", False),
    ],
)
async def test_request_id_from_the_client_is_kept_only_when_short_and_printable(
    client: httpx.AsyncClient, logs: LogCapture, sent: str, kept: bool
) -> None:
    response = await client.get("/api/alice/tasks", headers={"X-Request-ID": sent})
    echoed = response.headers["x-request-id"]
    if kept:
        assert echoed == sent
    else:
        assert GENERATED_ID.fullmatch(echoed), echoed
    assert logs.access(echoed)["status"] == 200


async def test_non_ascii_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers=[(b"X-Request-ID", "café".encode())])
    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])


async def test_request_id_is_generated_when_absent_and_unique(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/health")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(GENERATED_ID.fullmatch(value) for value in ids)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/no/such/route", {}, 404),
        ("PUT", "/api/alice/tasks", {}, 405),
        ("POST", "/api/alice/tasks", {"content": b"x" * 70_000}, 413),
        ("POST", "/api/alice/tasks", {"content": b"title=x"}, 415),
        ("POST", "/api/alice/tasks", {"json": {"title": ""}}, 422),
    ],
)
async def test_every_response_echoes_the_request_id_in_header_and_problem(
    client: httpx.AsyncClient,
    logs: LogCapture,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
) -> None:
    headers = {"X-Request-ID": f"edge-{status}"}
    if "content" in kwargs:
        headers["Content-Type"] = "application/json" if status == 413 else "text/plain"
    response = await client.request(method, path, headers=headers, **kwargs)
    body = assert_problem(response, status)
    assert response.headers["x-request-id"] == f"edge-{status}"
    assert body["request_id"] == f"edge-{status}"
    line = logs.access(f"edge-{status}")
    assert line["status"] == status
    # The body guard answers before routing: the route is still named.
    assert line["route"] == ("<unmatched>" if status == 404 else "/api/{user_id}/tasks")


async def test_a_500_carries_the_request_id_and_its_log_line_the_traceback(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    async def boom() -> None:
        raise RuntimeError("kaboom for the test")

    app_of(client).add_api_route("/boom", boom)
    response = await client.get("/boom", headers={"X-Request-ID": "the-500"})

    body = assert_problem(response, 500)
    assert body["request_id"] == "the-500"
    assert response.headers["x-request-id"] == "the-500"
    assert "kaboom" not in response.text  # the details stay in the log
    errors = [r for r in logs.of_request("the-500") if r["level"] == "ERROR"]
    assert len(errors) == 1, logs.text()
    assert errors[0]["operation"] == "GET /boom"
    assert "RuntimeError: kaboom for the test" in errors[0]["traceback"]
    assert logs.access("the-500")["status"] == 500


async def test_every_line_of_a_request_carries_its_id(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    async def chatty() -> dict[str, str]:
        import logging

        logging.getLogger("todo_api.tasks").warning("something worth noting")
        logging.getLogger("some.library").info("a library speaks")
        return {}

    app_of(client).add_api_route("/chatty", chatty)
    await client.get("/chatty", headers={"X-Request-ID": "chatty-1"})
    messages = [r["message"] for r in logs.of_request("chatty-1")]
    assert "something worth noting" in messages
    assert "a library speaks" in messages
    assert any(r["logger"] == "todo_api.access" for r in logs.of_request("chatty-1"))


# --- database errors ------------------------------------------------------------------------------


async def test_database_error_is_logged_once_with_operation_sqlstate_and_request_id(
    client: httpx.AsyncClient, logs: LogCapture, backend: str
) -> None:
    app_of(client).add_api_route("/bad-sql", _bad_sql)
    response = await client.get("/bad-sql", headers={"X-Request-ID": "bad-sql"})

    # A bug, not an outage: 500, and nothing tells the client to retry.
    assert response.status_code == 500
    assert "retry-after" not in response.headers
    assert response.json()["request_id"] == "bad-sql"
    problems = [r for r in logs.of_request("bad-sql") if r["logger"] != "todo_api.access"]
    assert len(problems) == 1, logs.text()
    [line] = problems
    assert line["operation"] == "GET /bad-sql"
    assert "no_such_column" in line["traceback"]
    assert line["level"] == "ERROR"
    # PostgreSQL names the error (42703: undefined column); SQLite its result code.
    assert line["sqlstate"] == ("SQLITE_ERROR" if backend == "sqlite" else "42703")
    assert f"SQLSTATE {line['sqlstate']}" in line["message"]


async def _bad_sql(request: Request) -> None:
    """A route with a programming error in its SQL, run the way every query runs."""
    await request.app.state.database.rows(
        sa.text("SELECT no_such_column FROM tasks"), idempotent=True
    )


# --- credentials ----------------------------------------------------------------------------------


async def test_password_never_logged_even_with_sqlalchemy_debug_logging(
    postgresql_server_url: str,
) -> None:
    # The test server trusts local connections: the password is accepted and unused.
    url = make_url(postgresql_server_url).set(password=PASSWORD)
    settings = settings_for(url.render_as_string(hide_password=False), log_level="DEBUG")

    with captured_logs(settings, log_level="DEBUG") as logs:
        async with running(settings) as client:
            app_of(client).add_api_route("/bad-sql", _bad_sql)
            await create_task(client)
            await client.get("/api/alice/tasks")
            failed = await client.get("/bad-sql", headers={"X-Request-ID": "bad-sql"})
            ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert failed.status_code == 500
    text = logs.text()
    # Debug logging was really on (statements, pool checkouts) ...
    assert any(r["logger"] == "todo_api.sql" for r in logs.records())
    assert any(r["logger"].startswith("sqlalchemy.pool") for r in logs.records())
    # ... a real database error was logged, with its traceback ...
    [error] = [r for r in logs.of_request("bad-sql") if r["level"] == "ERROR"]
    assert error["sqlstate"] == "42703"
    assert "no_such_column" in error["traceback"]
    # ... and the password appears nowhere: not in connection lines, errors or tracebacks.
    assert PASSWORD not in text
