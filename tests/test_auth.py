"""Bearer-token authentication (AUTH_MODE=jwt): real tokens, real keys, a real JWKS endpoint.

Tokens are minted here with HS256/384/512 and with Ed25519, RSA and P-256 keys; asymmetric
keys are served by a JWKS server on loopback and fetched by the API over HTTP. Nothing of the
verifier is mocked; only the JWKS cache's clock is moved forward instead of sleeping a minute.
Every rejected write is checked against the database: nothing changed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from jwks_server import (
    FakeClock,
    JwksServer,
    SigningKey,
    b64url,
    b64url_json,
    hmac_token,
    unsigned_token,
)
from support import PRODUCTION_CURSOR_SECRET, app_of, assert_problem, clean_env, free_port, running
from todo_api.auth.tokens import TokenVerifier
from todo_api.settings import AppEnv, ConfigError, Settings, load_settings

SECRET = "better-auth-secret-" + "0123456789abcdef" * 3  # 67 bytes: HS256, HS384 and HS512
ISSUER = "https://auth.example.test"
AUDIENCE = "https://app.example.test"
ALICE, BOB = "alice", "bob"
INVALID = 'Bearer error="invalid_token", error_description="{}"'


def claims(user: str | None = ALICE, **changes: Any) -> dict[str, Any]:
    """Claims as Better Auth's JWT plugin issues them; a change of None removes the claim."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now}
    base["exp"] = now + 900
    return {key: value for key, value in (base | changes).items() if value is not None}


def hs(payload: dict[str, Any], alg: str = "HS256", secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm=alg)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_auth(settings: Settings, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "auth_mode": "jwt",
        "auth_issuer": ISSUER,
        "auth_audience": AUDIENCE,
        "auth_leeway_seconds": 30,
    }
    return settings.model_copy(update=values | changes)


def jwks_cache_clock(client: httpx.AsyncClient) -> FakeClock:
    """Replace the running app's JWKS clock with one the test moves forward."""
    verifier: TokenVerifier = app_of(client).state.token_verifier
    assert verifier.jwks is not None
    clock = FakeClock()
    verifier.jwks.clock = clock
    return clock


async def snapshot(engine: AsyncEngine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row of tasks and users: compared before and after a rejected request."""
    async with engine.connect() as connection:
        tasks = (await connection.execute(sa.text("SELECT * FROM tasks ORDER BY id"))).all()
        users = (await connection.execute(sa.text("SELECT * FROM users ORDER BY id"))).all()
    return [tuple(row) for row in tasks], [tuple(row) for row in users]


async def api_operations(
    client: httpx.AsyncClient, user: str, task_id: str
) -> list[tuple[str, str]]:
    """(method, concrete path) of every /api operation the app documents, whatever exists."""
    spec = (await client.get("/openapi.json")).json()
    operations = [
        (method.upper(), path.replace("{user_id}", user).replace("{task_id}", task_id))
        for path, item in spec["paths"].items()
        if path.startswith("/api/")
        for method in item
    ]
    assert len(operations) >= 7, operations
    return operations


async def send(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    # A valid JSON body on writes: authentication must answer before any body validation.
    body = {"title": "hijacked"} if method in ("POST", "PUT", "PATCH") else None
    return await client.request(method, path, json=body, headers=headers)


async def create(client: httpx.AsyncClient, token: str, user: str = ALICE) -> dict[str, Any]:
    response = await client.post(
        f"/api/{user}/tasks", json={"title": "Buy milk"}, headers=bearer(token)
    )
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
async def hs_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with AUTH_JWT_SECRET only (the Better Auth shared-secret set-up)."""
    async with running(with_auth(settings, auth_jwt_secret=SecretStr(SECRET))) as http:
        yield http


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, SigningKey]:
    # Module-wide: generating an RSA key takes a noticeable fraction of a second.
    return {alg: SigningKey.generate(alg) for alg in ("EdDSA", "RS256", "ES256")}


@pytest.fixture
def idp(signing_keys: dict[str, SigningKey]) -> Iterator[JwksServer]:
    server = JwksServer(*signing_keys.values())
    yield server
    server.stop()


@pytest.fixture
async def jwks_client(settings: Settings, idp: JwksServer) -> AsyncIterator[httpx.AsyncClient]:
    """The API with AUTH_JWKS_URL only (the Better Auth JWT plugin set-up)."""
    async with running(with_auth(settings, auth_jwks_url=idp.url)) as http:
        yield http


# --- valid tokens: the whole API works ---------------------------------------------------------


async def crud_walk(client: httpx.AsyncClient, token: str) -> None:
    """Every endpoint, once, as the token's user."""
    auth = bearer(token)
    task = await create(client, token)
    url = f"/api/{ALICE}/tasks/{task['id']}"
    listed = await client.get(f"/api/{ALICE}/tasks", headers=auth)
    assert listed.status_code == 200 and [t["id"] for t in listed.json()["items"]] == [task["id"]]
    assert (await client.get(url, headers=auth)).json()["title"] == "Buy milk"
    replaced = await client.put(url, json={"title": "Buy bread"}, headers=auth)
    assert replaced.status_code == 200 and replaced.json()["title"] == "Buy bread"
    patched = await client.patch(url, json={"description": "wholemeal"}, headers=auth)
    assert patched.status_code == 200 and patched.json()["description"] == "wholemeal"
    toggled = await client.patch(f"{url}/complete", headers=auth)
    assert toggled.status_code == 200 and toggled.json()["completed"] is True
    assert (await client.delete(url, headers=auth)).status_code == 204
    assert_problem(await client.get(url, headers=auth), 404)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_every_endpoint_works_with_a_shared_secret_token(
    hs_client: httpx.AsyncClient, alg: str
) -> None:
    await crud_walk(hs_client, hs(claims(), alg=alg))


@pytest.mark.parametrize("alg", ["EdDSA", "RS256", "ES256"])
async def test_every_endpoint_works_with_a_jwks_token(
    jwks_client: httpx.AsyncClient, signing_keys: dict[str, SigningKey], alg: str
) -> None:
    await crud_walk(jwks_client, signing_keys[alg].sign(claims()))


async def test_a_jwks_token_without_kid_is_checked_against_the_keys_of_its_algorithm(
    jwks_client: httpx.AsyncClient, signing_keys: dict[str, SigningKey]
) -> None:
    key = signing_keys["EdDSA"]
    token = jwt.encode(claims(), key.private, algorithm="EdDSA")
    assert "kid" not in jwt.get_unverified_header(token)
    assert (await jwks_client.get(f"/api/{ALICE}/tasks", headers=bearer(token))).status_code == 200


async def test_the_user_claim_is_configurable(settings: Settings) -> None:
    configured = with_auth(settings, auth_jwt_secret=SecretStr(SECRET), auth_user_claim="uid")
    async with running(configured) as client:
        token = hs(claims(user="someone-else", uid=ALICE))
        assert (await client.get(f"/api/{ALICE}/tasks", headers=bearer(token))).status_code == 200
        response = await client.get(f"/api/{ALICE}/tasks", headers=bearer(hs(claims())))
        assert_problem(response, 401)
        assert response.json()["detail"] == "The token has no usable uid claim (the user id)"


async def test_without_auth_audience_any_audience_is_accepted(settings: Settings) -> None:
    # Better Auth always sets aud (its base URL); it is only checked when AUTH_AUDIENCE is set.
    configured = with_auth(settings, auth_jwt_secret=SecretStr(SECRET), auth_audience=None)
    async with running(configured) as client:
        for token in (hs(claims(aud="https://whatever.test")), hs(claims(aud=None))):
            response = await client.get(f"/api/{ALICE}/tasks", headers=bearer(token))
            assert response.status_code == 200, response.text


# --- clock skew --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"exp": -10}, id="expired-within-leeway"),
        pytest.param({"nbf": +10}, id="nbf-within-leeway"),
        pytest.param({"iat": +10}, id="iat-within-leeway"),
    ],
)
async def test_clock_skew_within_the_leeway_is_accepted(
    hs_client: httpx.AsyncClient, changes: dict[str, Any]
) -> None:
    now = int(time.time())
    token = hs(claims(ALICE, **{name: now + offset for name, offset in changes.items()}))
    assert (await hs_client.get(f"/api/{ALICE}/tasks", headers=bearer(token))).status_code == 200


async def test_leeway_is_configurable(settings: Settings) -> None:
    configured = with_auth(settings, auth_jwt_secret=SecretStr(SECRET), auth_leeway_seconds=0)
    async with running(configured) as client:
        token = hs(claims(exp=int(time.time()) - 5))
        response = await client.get(f"/api/{ALICE}/tasks", headers=bearer(token))
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == INVALID.format("The token has expired")


# --- rejected tokens: 401, RFC 6750 challenge, nothing written ---------------------------------


def _tampered_payload() -> str:
    header, _payload, signature = hs(claims()).split(".")
    return f"{header}.{b64url_json(claims(exp=int(time.time()) + 10**6))}.{signature}"


def _now(offset: int) -> int:
    return int(time.time()) + offset


SHARED_SECRET_REJECTIONS: list[Any] = [
    pytest.param(
        lambda: hs(claims(), secret=SECRET[::-1]), "The token signature is invalid", id="bad-sig"
    ),
    pytest.param(_tampered_payload, "The token signature is invalid", id="tampered-payload"),
    pytest.param(lambda: hs(claims(exp=_now(-60))), "The token has expired", id="expired"),
    pytest.param(
        lambda: hs(claims(nbf=_now(120))),
        "The token is not valid yet (nbf or iat is in the future)",
        id="nbf-in-future",
    ),
    pytest.param(
        lambda: hs(claims(iat=_now(120))),
        "The token is not valid yet (nbf or iat is in the future)",
        id="iat-in-future",
    ),
    pytest.param(
        lambda: hs(claims(iss="https://evil.test")),
        f"The token's iss claim does not match AUTH_ISSUER (expected {ISSUER!r})",
        id="wrong-iss",
    ),
    pytest.param(
        lambda: hs(claims(aud="https://other-api.test")),
        f"The token's aud claim does not include AUTH_AUDIENCE (expected {AUDIENCE!r})",
        id="wrong-aud",
    ),
    pytest.param(
        lambda: hs(claims(iss=None)), "The token lacks the required iss claim", id="no-iss"
    ),
    pytest.param(
        lambda: hs(claims(aud=None)), "The token lacks the required aud claim", id="no-aud"
    ),
    pytest.param(
        lambda: hs(claims(exp=None)), "The token lacks the required exp claim", id="no-exp"
    ),
    pytest.param(
        lambda: hs(claims(user=None)),
        "The token has no usable sub claim (the user id)",
        id="no-sub",
    ),
    pytest.param(
        lambda: hs(claims(user="has space")),
        "The token has no usable sub claim (the user id)",
        id="unusable-sub",
    ),
    pytest.param(
        lambda: unsigned_token(claims()),
        "The token's signing algorithm is not accepted (use HS256, HS384, HS512)",
        id="alg-none",
    ),
    pytest.param(
        lambda: SigningKey.generate("RS256").sign(claims()),
        "The token's signing algorithm is not accepted (use HS256, HS384, HS512)",
        id="rs256-without-jwks",
    ),
    pytest.param(
        lambda: "not-a-jwt",
        "The token is malformed: expected a JWT (three base64url parts)",
        id="not-a-jwt",
    ),
    pytest.param(lambda: "abc.def.ghi", "The token is malformed", id="garbage-parts"),
    pytest.param(
        lambda: f"{b64url(b'[1]')}.{b64url_json(claims())}.sig",
        "The token is malformed",
        id="header-not-an-object",
    ),
    pytest.param(
        lambda: hs(claims()).rsplit(".", 1)[0] + "." + hs(claims(BOB)).rsplit(".", 1)[1],
        "The token signature is invalid",
        id="signature-of-another-token",
    ),
]


@pytest.mark.request_layer  # refused by the token check, before any SQL
@pytest.mark.parametrize(("make_token", "description"), SHARED_SECRET_REJECTIONS)
async def test_an_unusable_token_is_401_with_an_rfc6750_challenge_and_writes_nothing(
    hs_client: httpx.AsyncClient,
    engine: AsyncEngine,
    make_token: Callable[[], str],
    description: str,
) -> None:
    existing = await create(hs_client, hs(claims()))
    before = await snapshot(engine)
    token = make_token()
    url = f"/api/{ALICE}/tasks/{existing['id']}"

    writes = [("POST", f"/api/{ALICE}/tasks"), ("PUT", url), ("PATCH", url),
              ("PATCH", f"{url}/complete"), ("DELETE", url)]  # fmt: skip
    for method, path in [("GET", url), *writes]:
        response = await send(hs_client, method, path, bearer(token))
        body = assert_problem(response, 401)
        assert body["detail"] == description, (method, path)
        assert response.headers["www-authenticate"] == INVALID.format(description)
        # What was wrong is said; the token itself is never echoed.
        for part in filter(None, token.split(".")):
            if len(part) > 3:
                assert part not in response.text and part not in str(response.headers)

    assert await snapshot(engine) == before


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic YWxpY2U6c2VjcmV0", "Digest username=alice"],
    ids=["no-header", "basic", "digest"],
)
async def test_no_bearer_token_is_401_with_a_bare_bearer_challenge(
    hs_client: httpx.AsyncClient, engine: AsyncEngine, authorization: str | None
) -> None:
    before = await snapshot(engine)
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in await api_operations(hs_client, ALICE, str(uuid.uuid4())):
        response = await send(hs_client, method, path, headers)
        assert_problem(response, 401)
        # RFC 6750 §3.1: a request without credentials gets no error code.
        assert response.headers["www-authenticate"] == "Bearer", (method, path)
    assert await snapshot(engine) == before


@pytest.mark.parametrize(
    ("headers", "description"),
    [
        ([("Authorization", "Bearer")], "The Authorization header has no token after Bearer"),
        ([("Authorization", "Bearer    ")], "The Authorization header has no token after Bearer"),
        (
            [("Authorization", "Bearer a b c")],
            "The token is malformed: expected a JWT (three base64url parts)",
        ),
        (
            [("Authorization", f"Bearer {hs(claims())}"), ("Authorization", "Bearer x.y.z")],
            "The request has more than one Authorization header",
        ),
    ],
    ids=["empty", "blank", "spaces", "two-headers"],
)
async def test_a_malformed_authorization_header_is_401_invalid_token(
    hs_client: httpx.AsyncClient,
    engine: AsyncEngine,
    headers: list[tuple[str, str]],
    description: str,
) -> None:
    before = await snapshot(engine)
    response = await hs_client.post(
        f"/api/{ALICE}/tasks", json={"title": "x"}, headers=httpx.Headers(headers)
    )
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == INVALID.format(description)
    assert await snapshot(engine) == before


async def test_the_bearer_scheme_name_is_case_insensitive(hs_client: httpx.AsyncClient) -> None:
    response = await hs_client.get(
        f"/api/{ALICE}/tasks", headers={"Authorization": f"bearer {hs(claims())}"}
    )
    assert response.status_code == 200


async def test_401_comes_before_path_and_body_validation(
    hs_client: httpx.AsyncClient,
) -> None:
    # Without a valid token nothing about the request is judged: not its path, not its body.
    assert_problem(await hs_client.post("/api/a%20b/tasks", json={"title": ""}), 401)
    assert_problem(await hs_client.get(f"/api/{ALICE}/tasks/not-a-uuid"), 401)
    # With one, validation answers as before.
    auth = bearer(hs(claims()))
    assert_problem(await hs_client.post(f"/api/{ALICE}/tasks", json={}, headers=auth), 422)


# --- another user's token: 403 everywhere ------------------------------------------------------


async def test_a_token_for_another_user_is_403_on_every_endpoint_and_changes_nothing(
    hs_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    bobs = await create(hs_client, hs(claims(BOB)), user=BOB)
    before = await snapshot(engine)
    alices_token = hs(claims(ALICE))

    operations = await api_operations(hs_client, BOB, bobs["id"])
    for method, path in operations:
        response = await send(hs_client, method, path, bearer(alices_token))
        body = assert_problem(response, 403)
        assert body["detail"] == "The token's user may not access another user's tasks"
    # Also for a task id that does not exist: 403, not 404 (nothing is looked up).
    for method, path in await api_operations(hs_client, BOB, str(uuid.uuid4())):
        assert_problem(await send(hs_client, method, path, bearer(alices_token)), 403)

    assert await snapshot(engine) == before
    own = await hs_client.get(f"/api/{BOB}/tasks/{bobs['id']}", headers=bearer(hs(claims(BOB))))
    assert own.json() == bobs


async def test_a_jwks_token_for_another_user_is_403(
    jwks_client: httpx.AsyncClient, signing_keys: dict[str, SigningKey], engine: AsyncEngine
) -> None:
    before = await snapshot(engine)
    token = signing_keys["EdDSA"].sign(claims(ALICE))
    for method, path in await api_operations(jwks_client, BOB, str(uuid.uuid4())):
        assert_problem(await send(jwks_client, method, path, bearer(token)), 403)
    assert await snapshot(engine) == before


# --- JWKS: algorithm allow-list and confusion --------------------------------------------------


def _swap_header(token: str, **header: Any) -> str:
    _, payload, signature = token.split(".")
    return f"{b64url_json(header)}.{payload}.{signature}"


JWKS_ONLY = "The token's signing algorithm is not accepted (use RS256, ES256, EdDSA)"


@pytest.mark.request_layer  # refused by the token check, before any SQL
@pytest.mark.parametrize(
    ("make_token", "description"),
    [
        pytest.param(
            lambda keys: hmac_token(
                {"alg": "HS256", "typ": "JWT", "kid": keys["RS256"].kid},
                claims(),
                keys["RS256"].public_pem(),
            ),
            JWKS_ONLY,
            id="hs256-signed-with-the-rsa-public-key",
        ),
        pytest.param(
            lambda keys: _swap_header(keys["EdDSA"].sign(claims()), alg="HS256"),
            JWKS_ONLY,
            id="header-alg-tampered-to-hs256",
        ),
        pytest.param(
            lambda keys: _swap_header(
                keys["EdDSA"].sign(claims()), alg="RS256", kid=keys["EdDSA"].kid
            ),
            "The token's algorithm does not match its key",
            id="header-alg-tampered-to-rs256",
        ),
        pytest.param(
            lambda keys: _swap_header(
                keys["ES256"].sign(claims()), alg="ES256", kid=keys["EdDSA"].kid
            ),
            "The token's algorithm does not match its key",
            id="kid-swapped-to-another-key",
        ),
        pytest.param(lambda keys: unsigned_token(claims()), JWKS_ONLY, id="alg-none"),
        pytest.param(
            lambda keys: hs(claims()), JWKS_ONLY, id="hs256-with-a-secret-the-api-does-not-have"
        ),
        pytest.param(
            lambda keys: SigningKey(
                alg="EdDSA", private=SigningKey.generate("EdDSA").private, kid=keys["EdDSA"].kid
            ).sign(claims()),
            "The token signature is invalid",
            id="known-kid-foreign-key",
        ),
        pytest.param(
            lambda keys: _tamper_jwks_payload(keys["RS256"].sign(claims())),
            "The token signature is invalid",
            id="tampered-payload",
        ),
        pytest.param(
            lambda keys: keys["ES256"].sign(claims(exp=_now(-60))),
            "The token has expired",
            id="expired",
        ),
        pytest.param(
            lambda keys: keys["EdDSA"].sign(claims(iss="https://evil.test")),
            f"The token's iss claim does not match AUTH_ISSUER (expected {ISSUER!r})",
            id="wrong-iss",
        ),
        pytest.param(
            lambda keys: SigningKey.generate("EdDSA").sign(claims()),
            "The token was signed with a key this API does not know",
            id="unknown-kid",
        ),
    ],
)
async def test_jwks_rejections(
    jwks_client: httpx.AsyncClient,
    signing_keys: dict[str, SigningKey],
    engine: AsyncEngine,
    make_token: Callable[[dict[str, SigningKey]], str],
    description: str,
) -> None:
    before = await snapshot(engine)
    token = make_token(signing_keys)
    response = await jwks_client.post(
        f"/api/{ALICE}/tasks", json={"title": "x"}, headers=bearer(token)
    )
    assert_problem(response, 401)
    assert response.json()["detail"] == description
    assert response.headers["www-authenticate"] == INVALID.format(description)
    assert await snapshot(engine) == before


def _tamper_jwks_payload(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64url_json(claims(user=BOB))}.{signature}"


async def test_a_symmetric_key_published_in_the_jwks_is_never_used(
    settings: Settings, idp: JwksServer
) -> None:
    # Anyone can read a JWKS: an "oct" key there would let anyone sign tokens.
    leaked = b"k" * 32
    idp.publish_raw({"kty": "oct", "k": b64url(leaked), "kid": "oct-1", "alg": "HS256"})
    async with running(with_auth(settings, auth_jwks_url=idp.url)) as client:
        token = hmac_token({"alg": "HS256", "typ": "JWT", "kid": "oct-1"}, claims(), leaked)
        response = await client.get(f"/api/{ALICE}/tasks", headers=bearer(token))
        assert_problem(response, 401)
        assert response.json()["detail"] == JWKS_ONLY


async def test_secret_and_jwks_together_each_verify_their_own_algorithms(
    settings: Settings, idp: JwksServer, signing_keys: dict[str, SigningKey]
) -> None:
    configured = with_auth(settings, auth_jwks_url=idp.url, auth_jwt_secret=SecretStr(SECRET))
    async with running(configured) as client:
        url = f"/api/{ALICE}/tasks"
        assert (await client.get(url, headers=bearer(hs(claims())))).status_code == 200
        ed = signing_keys["EdDSA"].sign(claims())
        assert (await client.get(url, headers=bearer(ed))).status_code == 200
        # The RSA public key as an HMAC secret: checked against our secret, so it fails.
        rsa_key = signing_keys["RS256"]
        forged = hmac_token({"alg": "HS256", "kid": rsa_key.kid}, claims(), rsa_key.public_pem())
        response = await client.get(url, headers=bearer(forged))
        assert_problem(response, 401)
        assert response.json()["detail"] == "The token signature is invalid"


# --- JWKS cache: rotation, rate limit, outages -------------------------------------------------


async def test_a_rotated_key_is_picked_up_and_a_withdrawn_one_dropped(
    jwks_client: httpx.AsyncClient, idp: JwksServer, signing_keys: dict[str, SigningKey]
) -> None:
    clock = jwks_cache_clock(jwks_client)
    url = f"/api/{ALICE}/tasks"
    old = signing_keys["EdDSA"]
    assert idp.hits == 1  # warmed at start-up
    assert (await jwks_client.get(url, headers=bearer(old.sign(claims())))).status_code == 200
    assert idp.hits == 1  # served from the cache

    new = SigningKey.generate("EdDSA")
    idp.publish(new, replace=True)  # the provider rotates: only the new key is published
    clock.advance(61)
    assert (await jwks_client.get(url, headers=bearer(new.sign(claims())))).status_code == 200
    assert idp.hits == 2

    # The refreshed set no longer has the old key: its tokens stop working.
    response = await jwks_client.get(url, headers=bearer(old.sign(claims())))
    assert_problem(response, 401)
    assert idp.hits == 2  # and asking again within the minute does not refetch


async def test_unknown_kids_refetch_the_jwks_at_most_once_per_minute(
    jwks_client: httpx.AsyncClient, idp: JwksServer
) -> None:
    clock = jwks_cache_clock(jwks_client)
    url = f"/api/{ALICE}/tasks"

    def forged() -> dict[str, str]:
        return bearer(SigningKey.generate("EdDSA").sign(claims()))

    async def burst(count: int) -> None:
        # Concurrent: requests arriving together share one fetch.
        responses = await asyncio.gather(
            *(jwks_client.get(url, headers=forged()) for _ in range(count))
        )
        for response in responses:
            assert_problem(response, 401)

    assert idp.hits == 1
    await burst(10)
    assert idp.hits == 1  # within a minute of the start-up fetch: no fetch at all
    clock.advance(60)
    await burst(20)
    assert idp.hits == 2
    clock.advance(59)
    await burst(10)
    assert idp.hits == 2
    clock.advance(1)
    await burst(10)
    assert idp.hits == 3


async def test_an_unreachable_jwks_does_not_stop_tokens_whose_key_is_cached(
    jwks_client: httpx.AsyncClient, idp: JwksServer, signing_keys: dict[str, SigningKey]
) -> None:
    clock = jwks_cache_clock(jwks_client)
    url = f"/api/{ALICE}/tasks"
    idp.stop()

    token = signing_keys["RS256"].sign(claims())
    assert (
        await jwks_client.post(url, json={"title": "x"}, headers=bearer(token))
    ).status_code == 201
    # Long after the cache should be refreshed: the refresh fails in the background, the
    # cached keys keep answering.
    clock.advance(3600)
    for _ in range(3):
        assert (await jwks_client.get(url, headers=bearer(token))).status_code == 200
        await asyncio.sleep(0.05)  # let the background refresh run (and fail)
    assert (await jwks_client.get(url, headers=bearer(token))).status_code == 200

    # A key that is not cached cannot be checked: 503 (retry later), not the client's fault.
    clock.advance(61)
    response = await jwks_client.get(
        url, headers=bearer(SigningKey.generate("ES256").sign(claims()))
    )
    assert_problem(response, 503)
    assert response.headers["retry-after"]


async def test_a_jwks_down_at_start_up_does_not_stop_the_api(
    settings: Settings, idp: JwksServer, signing_keys: dict[str, SigningKey]
) -> None:
    idp.failing = True
    async with running(with_auth(settings, auth_jwks_url=idp.url)) as client:
        clock = jwks_cache_clock(client)
        assert (await client.get("/health")).status_code == 200
        token = bearer(signing_keys["EdDSA"].sign(claims()))
        assert_problem(await client.get(f"/api/{ALICE}/tasks", headers=token), 503)
        idp.failing = False
        clock.advance(5)  # with no key yet, a failed fetch is retried sooner than a minute
        assert (await client.get(f"/api/{ALICE}/tasks", headers=token)).status_code == 200


# --- open routes, OpenAPI ----------------------------------------------------------------------


async def test_health_docs_and_openapi_need_no_token(hs_client: httpx.AsyncClient) -> None:
    for path in ("/health", "/health/ready", "/docs", "/openapi.json"):
        response = await hs_client.get(path)
        assert response.status_code == 200, (path, response.text)


async def test_openapi_declares_the_bearer_scheme_on_every_api_operation(
    hs_client: httpx.AsyncClient,
) -> None:
    spec = (await hs_client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["type"] == "http"
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["HTTPBearer"]["bearerFormat"] == "JWT"
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if path.startswith("/api/"):
                assert operation["security"] == [{"HTTPBearer": []}], (method, path)
                for status in ("401", "403"):
                    content = operation["responses"][status]["content"]
                    schema = content["application/problem+json"]["schema"]
                    problem = {"$ref": "#/components/schemas/Problem"}
                    # A write that can exceed a quota also answers a quota problem (403).
                    assert schema == problem or problem in schema["anyOf"], (method, path)
            else:
                assert "security" not in operation, (method, path)


async def test_the_openapi_document_is_the_same_in_every_auth_mode(
    hs_client: httpx.AsyncClient, settings: Settings
) -> None:
    # A client generated from a development server (AUTH_MODE=none) must send tokens to a
    # production one: both serve one document.
    with_tokens = (await hs_client.get("/openapi.json")).json()
    async with running(settings) as open_client:
        assert open_client.app.state.settings.auth_mode == "none"  # type: ignore[attr-defined]
        without = (await open_client.get("/openapi.json")).json()
    assert without == with_tokens


# --- users.email from the token ----------------------------------------------------------------


async def stored_email(engine: AsyncEngine, user: str) -> str | None:
    async with engine.connect() as connection:
        query = sa.text("SELECT email FROM users WHERE id = :id")
        email: str | None = (await connection.execute(query, {"id": user})).scalar_one()
        return email


async def test_the_token_email_is_recorded_on_the_first_write_only(
    hs_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await create(hs_client, hs(claims(email="alice@example.com")))
    assert await stored_email(engine, ALICE) == "alice@example.com"
    # A later token with another address does not change it (the provider owns the address).
    await create(hs_client, hs(claims(email="alice@new.example.com")))
    assert await stored_email(engine, ALICE) == "alice@example.com"

    # First write without an email: stays NULL, a later email is not filled in.
    await create(hs_client, hs(claims(BOB)), user=BOB)
    await create(hs_client, hs(claims(BOB, email="bob@example.com")), user=BOB)
    assert await stored_email(engine, BOB) is None


async def test_two_users_claiming_one_email_both_can_write(
    hs_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await create(hs_client, hs(claims(email="shared@example.com")))
    # UNIQUE(users.email): the second user is provisioned without the address, not refused.
    task = await create(hs_client, hs(claims(BOB, email="shared@example.com")), user=BOB)
    assert task["user_id"] == BOB
    assert await stored_email(engine, ALICE) == "shared@example.com"
    assert await stored_email(engine, BOB) is None


async def test_concurrent_first_writes_claiming_one_email_all_succeed(
    hs_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    users = [f"user-{i}" for i in range(8)]
    responses = await asyncio.gather(
        *(
            hs_client.post(
                f"/api/{user}/tasks",
                json={"title": "x"},
                headers=bearer(hs(claims(user, email="same@example.com"))),
            )
            for user in users
        )
    )
    assert [response.status_code for response in responses] == [201] * len(users)
    emails = [await stored_email(engine, user) for user in users]
    assert emails.count("same@example.com") == 1 and emails.count(None) == len(users) - 1


@pytest.mark.parametrize(
    "extra",
    [{"emailVerified": False}, {"email_verified": False}, {"email": "not-an-address"}],
    ids=["better-auth-unverified", "oidc-unverified", "implausible"],
)
async def test_an_unverified_or_implausible_email_is_not_recorded(
    hs_client: httpx.AsyncClient, engine: AsyncEngine, extra: dict[str, Any]
) -> None:
    await create(hs_client, hs(claims(**({"email": "alice@example.com"} | extra))))
    assert await stored_email(engine, ALICE) is None


# --- start-up: defaults, warnings, refusals ----------------------------------------------------


async def test_the_open_api_is_logged_as_a_warning_at_start_up(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert settings.auth_mode == "none"  # APP_ENV=test defaults to an open API
    with caplog.at_level("WARNING", logger="todo_api"):
        async with running(settings) as client:
            assert (await client.get(f"/api/{ALICE}/tasks")).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "AUTH_MODE=none" in r.getMessage()]
    assert len(warnings) == 1 and "the default when APP_ENV=test" in warnings[0]
    assert "the API is open" in warnings[0]


async def test_start_up_logs_the_effective_token_rules_but_never_the_secret(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    configured = with_auth(settings, auth_jwt_secret=SecretStr(SECRET))
    with caplog.at_level("INFO", logger="todo_api"):
        async with running(configured):
            pass
    [line] = [r.getMessage() for r in caplog.records if "authentication:" in r.getMessage()]
    assert "HS256" in line and "keys from AUTH_JWT_SECRET" in line
    assert f"issuer {ISSUER!r}" in line and f"audience {AUDIENCE!r}" in line
    assert "claim 'sub'" in line
    assert SECRET not in caplog.text


async def test_production_with_auth_mode_none_set_explicitly_starts_with_a_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    production = settings.model_copy(update={"app_env": AppEnv.production, "auth_mode": "none"})
    with caplog.at_level("WARNING", logger="todo_api"):
        async with running(production) as client:
            assert (await client.get(f"/api/{ALICE}/tasks")).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "AUTH_MODE=none" in r.getMessage()]
    assert len(warnings) == 1 and "the default" not in warnings[0]


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Settings see neither the developer's environment nor a `.env` file."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("isolated")
def test_defaults_by_environment() -> None:
    assert load_settings().auth_mode == "none"
    assert load_settings(app_env="test").auth_mode == "none"
    production = load_settings(app_env="production", database_url="sqlite:///x.db",
                               auth_jwt_secret=SECRET,
                               cursor_secret=PRODUCTION_CURSOR_SECRET)  # fmt: skip
    assert production.auth_mode == "jwt" and production.auth_enabled
    explicit = load_settings(app_env="production", database_url="sqlite:///x.db",
                             auth_mode="none",
                             cursor_secret=PRODUCTION_CURSOR_SECRET)  # fmt: skip
    assert not explicit.auth_enabled
    assert load_settings(auth_mode="jwt", auth_jwks_url="https://a.test/api/auth/jwks").auth_enabled


@pytest.mark.usefixtures("isolated")
def test_a_secret_shorter_than_32_bytes_is_refused_without_echoing_it() -> None:
    short = "only-31-bytes-of-secret-value!!"
    assert len(short.encode()) == 31
    with pytest.raises(ConfigError) as caught:
        load_settings(auth_jwt_secret=short)
    message = str(caught.value)
    assert "AUTH_JWT_SECRET: must be at least 32 bytes" in message
    assert short not in message
    # 32 bytes is enough (multi-byte characters count as bytes).
    assert load_settings(auth_jwt_secret="é" * 16).auth_jwt_secret is not None


@pytest.mark.usefixtures("isolated")
def test_production_without_a_key_source_fails_naming_the_variables() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            app_env="production",
            database_url="sqlite:///x.db",
            cursor_secret=PRODUCTION_CURSOR_SECRET,
        )
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == 1
    assert lines[0].startswith("  AUTH_MODE: jwt (the default when APP_ENV=production)")
    assert "AUTH_JWT_SECRET" in lines[0] and "AUTH_JWKS_URL" in lines[0]
    assert "AUTH_MODE=none" in lines[0]


@pytest.mark.usefixtures("isolated")
def test_every_auth_problem_is_reported_with_the_others() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            app_env="production",
            auth_leeway_seconds=-1,
            auth_jwks_url="ftp://x",
            cursor_secret=PRODUCTION_CURSOR_SECRET,
        )
    named = sorted(line.split(":")[0].strip() for line in str(caught.value).splitlines()[1:])
    assert named == ["AUTH_JWKS_URL", "AUTH_LEEWAY_SECONDS", "DATABASE_URL"]


def test_the_cli_refuses_to_start_in_production_without_a_key_source(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "todo_api", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=clean_env(
            APP_ENV="production",
            CURSOR_SECRET=PRODUCTION_CURSOR_SECRET,
            DATABASE_URL=f"sqlite:///{tmp_path}/todo.db",
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "AUTH_MODE:" in result.stderr
    assert "AUTH_JWT_SECRET" in result.stderr and "AUTH_JWKS_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "todo.db").exists()


def test_the_cli_refuses_a_short_secret_without_printing_it(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "todo_api", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=clean_env(AUTH_MODE="jwt", AUTH_JWT_SECRET="tiny-secret-value"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "AUTH_JWT_SECRET: must be at least 32 bytes" in result.stderr
    assert "tiny-secret-value" not in result.stdout + result.stderr
