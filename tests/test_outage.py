"""A database outage after start-up: fast 503 problems, liveness stays up, recovery by itself."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from support import assert_problem, running, settings_for
from tcp_proxy import TcpProxy

CONNECT_TIMEOUT = 1.0


@pytest.fixture
async def proxy(postgresql_server_url: str) -> AsyncIterator[TcpProxy]:
    url = make_url(postgresql_server_url)
    tcp_proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await tcp_proxy.start()
    yield tcp_proxy
    await tcp_proxy.close()


@pytest.fixture
async def client(postgresql_server_url: str, proxy: TcpProxy) -> AsyncIterator[httpx.AsyncClient]:
    through_proxy = make_url(postgresql_server_url).set(host="127.0.0.1", port=proxy.port)
    settings = settings_for(
        through_proxy.render_as_string(hide_password=False),
        db_connect_timeout=CONNECT_TIMEOUT,
        db_pool_timeout=CONNECT_TIMEOUT,
    )
    async with running(settings) as http:
        yield http


async def timed(request: object) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await request  # type: ignore[misc]
    return response, time.perf_counter() - started


@pytest.mark.parametrize("failure", ["cut", "stall"])
async def test_outage_gives_fast_503_and_recovers_without_restart(
    client: httpx.AsyncClient, proxy: TcpProxy, failure: str
) -> None:
    base = f"/api/outage-{failure}-{uuid.uuid4().hex}/tasks"  # the shared database is not emptied
    created = await client.post(base, json={"title": "before"})
    assert created.status_code == 201

    proxy.cut()  # drop the pool's open connections
    if failure == "stall":
        proxy.stall()  # new connections hang instead of being refused

    for request in (
        client.get(base),
        client.post(base, json={"title": "during"}),
        client.get(f"{base}/{created.json()['id']}"),
    ):
        response, seconds = await timed(request)
        body = assert_problem(response, 503)
        assert response.headers["retry-after"].isdigit()
        assert "Traceback" not in response.text and "asyncpg" not in body["detail"]
        assert seconds < CONNECT_TIMEOUT * 3 + 1, f"took {seconds:.1f}s"

    liveness, seconds = await timed(client.get("/health"))
    assert liveness.status_code == 200 and seconds < 0.5
    ready, seconds = await timed(client.get("/health/ready"))
    assert_problem(ready, 503)
    assert ready.headers["retry-after"].isdigit()
    assert seconds < CONNECT_TIMEOUT * 3 + 1

    proxy.restore()

    listing = await client.get(base)
    assert listing.status_code == 200
    titles = [task["title"] for task in listing.json()["items"]]
    assert titles == ["before"], "the write attempted during the outage must not exist"
    assert (await client.get("/health/ready")).status_code == 200
