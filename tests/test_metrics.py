"""`GET /metrics`: names and labels after real requests, pool gauges, several workers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import PRODUCTION_CURSOR_SECRET, running, served
from todo_api import __version__
from todo_api.platform.observability.metrics import PoolStats, pool_stats
from todo_api.settings import Settings

TASKS = "/api/{user_id}/tasks"
TASK = "/api/{user_id}/tasks/{task_id}"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: str, name: str, **labels: str) -> float | None:
    return samples(scraped).get((name, frozenset(labels.items())))


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_request_count_and_latency_by_method_route_template_and_status_class(
    client: httpx.AsyncClient, backend: str
) -> None:
    created = [
        (await client.post("/api/alice/tasks", json={"title": f"t{i}"})).json() for i in range(3)
    ]
    for task in created:
        assert (await client.get(f"/api/alice/tasks/{task['id']}")).status_code == 200
    assert (await client.get("/api/alice/tasks/00000000-0000-0000-0000-000000000000")).is_error
    assert (await client.get("/nowhere")).status_code == 404
    await client.post("/api/alice/tasks", json={"title": ""})  # 422

    text = await scrape(client)
    assert value(text, "http_requests_total", method="POST", route=TASKS, status_class="2xx") == 3
    assert value(text, "http_requests_total", method="GET", route=TASK, status_class="2xx") == 3
    assert value(text, "http_requests_total", method="GET", route=TASK, status_class="4xx") == 1
    assert value(text, "http_requests_total", method="POST", route=TASKS, status_class="4xx") == 1
    assert (
        value(text, "http_requests_total", method="GET", route="<unmatched>", status_class="4xx")
        == 1
    )
    labels = {"method": "GET", "route": TASK, "status_class": "2xx"}
    assert value(text, "http_request_duration_seconds_count", **labels) == 3
    assert (value(text, "http_request_duration_seconds_sum", **labels) or 0) > 0
    assert value(text, "http_request_duration_seconds_bucket", le="+Inf", **labels) == 3
    # No raw paths: every route label is a template or the placeholder.
    routes = {dict(key[1]).get("route") for key in samples(text) if key[0] == "http_requests_total"}
    assert routes <= {TASKS, TASK, "<unmatched>", "/metrics"}, routes
    # The scrape itself is in flight while it is answered.
    assert value(text, "http_requests_in_progress") == 1
    dialect = "sqlite" if backend == "sqlite" else "postgresql"
    assert value(text, "todo_api_info", version=__version__, dialect=dialect) == 1
    # Every statement is timed, by kind.
    assert (value(text, "db_query_duration_seconds_count", operation="INSERT") or 0) >= 3
    assert (value(text, "db_query_duration_seconds_count", operation="SELECT") or 0) >= 3
    assert "_created" not in text  # creation timestamps are not exported


async def test_pool_gauges_follow_checked_out_connections(settings: Settings, backend: str) -> None:
    tuned = settings.model_copy(update={"db_pool_size": 2, "db_max_overflow": 3})
    async with running(tuned) as client:
        engine = client.app.state.database.engine  # type: ignore[attr-defined]
        idle = await scrape(client)
        expected_size = 2 if backend != "sqlite" else engine.pool.size()
        assert value(idle, "db_pool_size") == expected_size
        assert value(idle, "db_pool_checked_out") == 0
        assert value(idle, "db_pool_overflow") == 0

        held = [await engine.connect() for _ in range(expected_size + 1)]
        try:
            busy = await scrape(client)
            assert value(busy, "db_pool_checked_out") == expected_size + 1
            assert value(busy, "db_pool_overflow") == 1
            ready = (await client.get("/health/ready")).json()["database"]["pool"]
        finally:
            for connection in held:
                await connection.close()
        after = await scrape(client)
    assert value(after, "db_pool_checked_out") == 0
    assert (value(after, "db_pool_idle") or 0) >= 1
    # Readiness reports the same figures (its own probe connection is back in the pool).
    assert ready["kind"].endswith("QueuePool")
    assert ready["size"] == expected_size
    assert ready["checked_out"] == expected_size + 1
    assert ready["overflow"] >= 1


async def test_a_pool_without_figures_is_left_out_not_faked() -> None:
    # An in-memory SQLite database shares one connection through a StaticPool.
    settings = Settings(
        app_env="test", database_url="sqlite:///:memory:", auto_migrate=True, auth_mode="none"
    )
    async with running(settings) as client:
        text = await scrape(client)
        stats = pool_stats(client.app.state.database.engine.pool)  # type: ignore[attr-defined]
    assert "db_pool_size" not in text
    assert stats == PoolStats(
        kind="StaticPool", size=None, checked_out=None, idle=None, overflow=None
    )


async def test_each_app_has_its_own_registry(settings: Settings) -> None:
    async with running(settings) as first, running(settings) as second:
        await first.get("/api/alice/tasks")
        await first.get("/api/alice/tasks")
        await second.get("/api/alice/tasks")
        labels = {"method": "GET", "route": TASKS, "status_class": "2xx"}
        assert value(await scrape(first), "http_requests_total", **labels) == 2
        assert value(await scrape(second), "http_requests_total", **labels) == 1


async def test_metrics_can_be_turned_off(settings: Settings) -> None:
    async with running(settings.model_copy(update={"metrics_enabled": False})) as client:
        response = await client.get("/metrics")
        assert response.status_code == 404
        assert (await client.get("/api/alice/tasks")).status_code == 200


# --- several workers ------------------------------------------------------------------------------


def _access_pids(log: str, route: str) -> dict[str, int]:
    """request id -> pid of the worker that answered it, from the JSON access lines."""
    answered = {}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        record: dict[str, Any] = json.loads(line)
        if record["logger"] == "todo_api.access" and record["route"] == route:
            answered[record["request_id"]] = record["pid"]
    return answered


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_workers_report_the_totals_of_both(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'workers.db'}"
        if database == "sqlite"
        else str(request.getfixturevalue("postgresql_server_url"))
    )
    with served(
        tmp_path,
        "--workers",
        "2",
        APP_ENV="production",  # JSON lines, parsed below
        CURSOR_SECRET=PRODUCTION_CURSOR_SECRET,
        AUTH_MODE="none",
        DATABASE_URL=url,
        DB_POOL_SIZE="3",
    ) as [server]:
        # New connections each time, so both workers get some; stop once both have answered.
        sent = 0
        workers: set[int] = set()
        # The second worker may still be starting: it gets connections once it accepts.
        deadline = time.monotonic() + 90
        while len(workers) < 2 or sent < 20:
            assert time.monotonic() < deadline, "one worker answered everything"
            response = httpx.get(
                f"{server.base_url}/api/alice/tasks",
                headers={"X-Request-ID": f"req-{sent}"},
                timeout=5,
            )
            assert response.status_code == 200
            sent += 1
            if sent % 10 == 0:
                workers = set(_access_pids(server.log(), TASKS).values())

        # Every scrape, whichever worker answers it, counts the requests of both.
        scrapers: set[int] = set()
        for attempt in range(200):
            response = httpx.get(
                f"{server.base_url}/metrics", headers={"X-Request-ID": f"scrape-{attempt}"}
            )
            text = response.text
            labels = {"method": "GET", "route": TASKS, "status_class": "2xx"}
            assert value(text, "http_requests_total", **labels) == sent
            assert value(text, "http_request_duration_seconds_count", **labels) == sent
            # Live gauges add up over the workers: two pools of DB_POOL_SIZE.
            if database == "postgresql":
                assert value(text, "db_pool_size") == 6
            assert value(text, "http_requests_in_progress") == 1  # this scrape
            assert value(text, "todo_api_info", version=__version__, dialect=database) == 1
            time.sleep(0.01)  # the access line of this scrape is written as it is answered
            scrapers = set(_access_pids(server.log(), "/metrics").values())
            if len(scrapers) == 2 and attempt >= 5:
                break
        assert scrapers == workers, "both workers answered scrapes"
        log = server.log()

    # The private metrics directory is created for the workers and removed on exit.
    [line] = [json.loads(x) for x in log.splitlines() if "metrics of the 2 workers" in x]
    directory = line["message"].rsplit(" ", 1)[1]
    assert not os.path.exists(directory)
    assert "uvicorn.access" not in log  # our access line replaces uvicorn's
    assert all(line.startswith("{") for line in log.splitlines() if line.strip()), log
