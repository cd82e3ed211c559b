"""A page on another origin can call the API: preflights, and CORS headers on every answer.

The browser itself is in tests/test_browser_cors.py; here each header is checked over HTTP, on
SQLite and PostgreSQL, for every kind of response a frontend meets (errors included), so that
JavaScript can read the status, the problem body and the headers it needs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy.engine import make_url

from support import assert_problem, running, settings_for
from tcp_proxy import TcpProxy
from todo_api.settings import ConfigError, load_settings

APP = "https://app.example.com"
OTHER = "https://evil.example.net"
SECRET = "cors-test-secret-" + "0123456789abcdef" * 2
# Fixed ids (a preflight never looks the task up): test ids must be the same in every pytest
# worker process, which collect the tests separately.
SOME_TASK = "6f1c2a9e-4b7d-4c3e-9a51-0d8e2b7f4a10"
ROUTES = [
    "/api/alice/tasks",
    "/api/alice/tasks/stats",
    f"/api/alice/tasks/{SOME_TASK}",
    f"/api/alice/tasks/{SOME_TASK}/complete",
]
EXPOSED = {"etag", "location", "retry-after", "x-request-id", "idempotent-replayed"}
REQUEST_HEADERS = (
    "authorization, content-type, if-match, if-none-match, idempotency-key, x-request-id, "
    "last-event-id"
)


def token(user: str = "alice") -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + 300}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@pytest.fixture
async def browser_api(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API as a frontend on APP meets it: tokens required, APP allowed."""
    settings = settings_for(
        database_url, auth_mode="jwt", auth_jwt_secret=SECRET, cors_origins=f"{APP},{APP}:8443"
    )
    async with running(settings) as client:
        client.headers["Origin"] = APP
        yield client


def assert_readable(response: httpx.Response, origin: str = APP) -> None:
    """JavaScript on `origin` may read this response and the headers it needs."""
    assert response.headers["access-control-allow-origin"] == origin, response.headers
    assert "Origin" in [part.strip() for part in response.headers["vary"].split(",")]
    exposed = {
        name.strip().lower()
        for name in response.headers["access-control-expose-headers"].split(",")
    }
    assert exposed >= EXPOSED


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ROUTES)
async def test_a_preflight_from_an_allowed_origin_is_answered_for_every_route(
    browser_api: httpx.AsyncClient, path: str, method: str
) -> None:
    response = await browser_api.options(
        path,
        headers={
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": REQUEST_HEADERS,
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert methods >= {"GET", "POST", "PUT", "PATCH", "DELETE"}
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert allowed >= {h.strip() for h in REQUEST_HEADERS.split(",")}
    assert response.headers["access-control-max-age"] == "7200"


async def test_a_preflight_from_another_origin_is_refused_as_a_problem(
    browser_api: httpx.AsyncClient,
) -> None:
    response = await browser_api.options(
        ROUTES[0], headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"}
    )
    body = assert_problem(response, 400)
    assert "access-control-allow-origin" not in response.headers
    assert OTHER in body["detail"] and "CORS_ORIGINS" in body["detail"]


async def test_a_preflight_asking_for_an_unknown_header_is_refused_naming_the_allowed_ones(
    browser_api: httpx.AsyncClient,
) -> None:
    response = await browser_api.options(
        ROUTES[0],
        headers={
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-Debug",
        },
    )
    body = assert_problem(response, 400)
    assert "Idempotency-Key" in body["detail"]


async def test_every_kind_of_answer_is_readable_from_an_allowed_origin(
    browser_api: httpx.AsyncClient,
) -> None:
    tasks = "/api/alice/tasks"
    answers: dict[int, httpx.Response] = {}
    answers[401] = await browser_api.get(tasks)
    answers[403] = await browser_api.get("/api/bob/tasks", headers=token())
    created = await browser_api.post(tasks, json={"title": "x"}, headers=token())
    answers[201] = created
    url = f"{tasks}/{created.json()['id']}"
    answers[200] = await browser_api.get(url, headers=token())
    answers[304] = await browser_api.get(
        url, headers={**token(), "If-None-Match": created.headers["etag"]}
    )
    answers[404] = await browser_api.get(f"{tasks}/{uuid.uuid4()}", headers=token())
    answers[412] = await browser_api.patch(
        url, json={"title": "y"}, headers={**token(), "If-Match": '"99"'}
    )
    answers[413] = await browser_api.post(
        tasks,
        content=b"{" + b" " * 70_000 + b"}",
        headers={**token(), "Content-Type": "application/json"},
    )
    answers[415] = await browser_api.post(
        tasks, content=b"x", headers={**token(), "Content-Type": "text/plain"}
    )
    answers[422] = await browser_api.post(tasks, json={"title": ""}, headers=token())

    for status, response in answers.items():
        assert response.status_code == status, (status, response.text)
        assert_readable(response)
    # The 401's problem body and challenge are what a login redirect needs to see.
    assert answers[401].json()["status"] == 401
    assert "bearer" in answers[401].headers["www-authenticate"].lower()
    assert created.headers["location"] and created.headers["etag"]


async def test_a_request_from_another_origin_gets_no_allow_origin(
    browser_api: httpx.AsyncClient,
) -> None:
    response = await browser_api.get("/api/alice/tasks", headers={**token(), "Origin": OTHER})
    assert response.status_code == 200  # served; the browser keeps it from the page
    assert "access-control-allow-origin" not in response.headers


async def test_an_outage_answer_is_readable_too(postgresql_server_url: str) -> None:
    server = make_url(postgresql_server_url)
    proxy = TcpProxy(server.host or "127.0.0.1", server.port or 5432)
    await proxy.start()
    try:
        url = server.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = settings_for(url, cors_origins=APP, db_connect_timeout=1, db_pool_timeout=1)
        async with running(settings) as client:
            proxy.cut()
            response = await client.get("/api/alice/tasks", headers={"Origin": APP})
    finally:
        await proxy.close()
    assert_problem(response, 503)
    assert_readable(response)
    assert response.headers["retry-after"]


async def test_credentials_and_wildcards(database_url: str) -> None:
    with_credentials = settings_for(database_url, cors_origins=APP, cors_allow_credentials=True)
    async with running(with_credentials) as client:
        response = await client.get("/api/alice/tasks", headers={"Origin": APP})
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-allow-origin"] == APP

    anyone = settings_for(database_url, cors_origins="*")
    async with running(anyone) as client:
        response = await client.get("/api/alice/tasks", headers={"Origin": OTHER})
    assert response.headers["access-control-allow-origin"] == "*"


async def test_development_allows_the_usual_dev_servers(database_url: str) -> None:
    async with running(settings_for(database_url)) as client:
        for origin in ("http://localhost:3000", "http://127.0.0.1:5173"):
            response = await client.get("/api/alice/tasks", headers={"Origin": origin})
            assert response.headers["access-control-allow-origin"] == origin
        response = await client.get("/api/alice/tasks", headers={"Origin": "http://localhost:8080"})
        assert "access-control-allow-origin" not in response.headers


PRODUCTION: dict[str, Any] = {
    "app_env": "production",
    "database_url": "sqlite:///x.db",
    "auth_mode": "none",
    "cursor_secret": "c" * 32,
}


def test_production_allows_no_origin_unless_told() -> None:
    assert load_settings(**PRODUCTION).allowed_origins == ()
    told = load_settings(**PRODUCTION, cors_origins=f" {APP} , http://localhost:3000 ")
    assert told.allowed_origins == (APP, "http://localhost:3000")


@pytest.mark.parametrize(
    "origin", ["https://app.example.com/", "app.example.com", "https://a.example/path", "ftp://x"]
)
def test_an_origin_that_is_not_scheme_host_port_stops_start_up_naming_it(origin: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(cors_origins=f"{APP},{origin}")
    message = str(refused.value)
    assert "CORS_ORIGINS" in message and repr(origin) in message


def test_a_wildcard_with_credentials_stops_start_up() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(cors_origins="*", cors_allow_credentials=True)
    assert "CORS_ALLOW_CREDENTIALS" in str(refused.value)


def test_a_blank_cors_origins_means_the_environment_default() -> None:
    # `CORS_ORIGINS=` as copied from .env.example: not "no origin at all".
    assert load_settings(cors_origins=" ").allowed_origins == load_settings().allowed_origins
    assert "http://localhost:3000" in load_settings(cors_origins="").allowed_origins
