"""The API against a real Better Auth server: real sign-ups, real EdDSA tokens, real JWKS.

tests/better_auth/server.mjs runs Better Auth (email and password, the JWT plugin with its
defaults) on Node with a SQLite file; two users sign up, one signs in, and the session cookie
buys a JWT from `GET /api/auth/token`. The API runs as `todo-api serve` with AUTH_MODE=jwt,
fetches Better Auth's `/api/auth/jwks` over HTTP, and is spoken to over HTTP. Nothing is mocked.

Node and npm are needed: without them the module is skipped, in CI (CI=true) it fails.
`npm ci` runs in tests/better_auth when its node_modules is missing or does not match the
committed package-lock.json (better-sqlite3 is compiled from source when its prebuilt binary
cannot be downloaded: a couple of minutes on two cores).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import jwt
import pytest

from support import IN_CI, assert_problem, served

PACKAGE = Path(__file__).resolve().parent / "better_auth"
NODE_MAJOR_MIN = 20  # better-sqlite3 12 supports Node 20 to 25
NPM_CI_TIMEOUT = 900  # seconds: a cold install compiles better-sqlite3 (SQLite itself) with gcc
READY_TIMEOUT = 60
READY = re.compile(r"^ready (http://127\.0\.0\.1:\d+)$", re.MULTILINE)
SESSION_COOKIE = "better-auth.session_token"
PASSWORD = "correct horse battery staple"
TIMEOUT = httpx.Timeout(10.0)


def unavailable(reason: str) -> NoReturn:
    """Skip the module here; fail it in CI, where Better Auth must really be tested."""
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


# --- Node, npm ci and the Better Auth server -----------------------------------------------------


def _locked_versions(lockfile: Path) -> dict[str, str]:
    packages: dict[str, Any] = json.loads(lockfile.read_text(encoding="utf-8"))["packages"]
    return {path: entry.get("version", "") for path, entry in packages.items() if path}


def _installed_matches_lock() -> bool:
    # npm writes node_modules/.package-lock.json at the end of a successful install.
    installed = PACKAGE / "node_modules" / ".package-lock.json"
    if not installed.is_file():
        return False
    return _locked_versions(installed) == _locked_versions(PACKAGE / "package-lock.json")


@pytest.fixture(scope="module")
def node_modules() -> None:
    """Node and npm are there, and tests/better_auth/node_modules is installed from its lock."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable(f"Better Auth needs Node.js >= {NODE_MAJOR_MIN} and npm: one is missing")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    major = re.match(r"v(\d+)\.", version)
    if major is None or int(major.group(1)) < NODE_MAJOR_MIN:
        unavailable(f"Better Auth needs Node.js >= {NODE_MAJOR_MIN}, found {version!r}")
    if _installed_matches_lock():
        return
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=PACKAGE,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        unavailable(f"`npm ci` in {PACKAGE} did not finish in {NPM_CI_TIMEOUT} s")
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        unavailable(f"`npm ci` in {PACKAGE} failed ({result.returncode}):\n{output}")


@dataclass
class NodeServer:
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while (found := READY.search(self.log())) is None:
            assert self.process.poll() is None, f"Better Auth exited early:\n{self.log()}"
            assert time.monotonic() < deadline, f"Better Auth not ready in time:\n{self.log()}"
            time.sleep(0.05)
        self.url = found.group(1)

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the server also stops when its stdin closes
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def better_auth(node_modules: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Better Auth server on a fresh SQLite file; its base URL."""
    directory = tmp_path_factory.mktemp("better_auth")
    log_path = directory / "better-auth.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("BETTER_AUTH")}
    env["NODE_ENV"] = "test"
    with log_path.open("wb") as log:
        # Port 0: the server picks a free port itself and announces it (no race for one).
        process = subprocess.Popen(
            ["node", "server.mjs", "0", str(directory / "better-auth.db")],
            cwd=PACKAGE,
            env=env,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = NodeServer(process=process, log_path=log_path)
    try:
        server.wait_until_ready()
        yield server.url
    finally:
        server.stop()


# --- users and their tokens --------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    id: str  # the user id Better Auth returned at sign-up
    email: str
    token: str  # a JWT from GET /api/auth/token


def _sign_up(auth: str, name: str) -> tuple[str, str, str]:
    """POST /api/auth/sign-up/email; (user id, email, session cookie)."""
    email = f"{name.lower()}@example.com"
    response = httpx.post(
        f"{auth}/api/auth/sign-up/email",
        json={"email": email, "password": PASSWORD, "name": name},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    user = response.json()["user"]
    assert user["email"] == email and isinstance(user["id"], str) and user["id"]
    return user["id"], email, _session_cookie(response)


def _sign_in(auth: str, email: str) -> str:
    """POST /api/auth/sign-in/email; the new session's cookie."""
    response = httpx.post(
        f"{auth}/api/auth/sign-in/email",
        json={"email": email, "password": PASSWORD},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return _session_cookie(response)


def _session_cookie(response: httpx.Response) -> str:
    value = response.cookies.get(SESSION_COOKIE)
    assert value, f"no {SESSION_COOKIE} cookie: {response.headers.get_list('set-cookie')}"
    return f"{SESSION_COOKIE}={value}"


def _jwt(auth: str, cookie: str) -> str:
    """GET /api/auth/token with the session cookie: Better Auth's JWT for that session."""
    response = httpx.get(f"{auth}/api/auth/token", headers={"Cookie": cookie}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    assert token.count(".") == 2, token
    return token


@dataclass(frozen=True)
class Accounts:
    alice: Account  # signed up, then signed in: her token comes from the sign-in session
    bob: Account  # signed up only: his token comes from the sign-up session


@pytest.fixture(scope="module")
def accounts(better_auth: str) -> Accounts:
    alice_id, alice_email, _ = _sign_up(better_auth, "Alice")
    bob_id, bob_email, bob_cookie = _sign_up(better_auth, "Bob")
    assert alice_id != bob_id
    alice = Account(alice_id, alice_email, _jwt(better_auth, _sign_in(better_auth, alice_email)))
    return Accounts(alice=alice, bob=Account(bob_id, bob_email, _jwt(better_auth, bob_cookie)))


# --- the API -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Api:
    url: str
    database: Path


@pytest.fixture(scope="module")
def api(
    better_auth: str, accounts: Accounts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """`todo-api serve` trusting the Better Auth server: its JWKS, issuer and audience."""
    directory = tmp_path_factory.mktemp("api")
    database = directory / "todo.db"
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": f"sqlite:///{database}",
        "AUTH_MODE": "jwt",
        "AUTH_JWKS_URL": f"{better_auth}/api/auth/jwks",
        # The JWT plugin's defaults: both are Better Auth's baseURL (its origin).
        "AUTH_ISSUER": better_auth,
        "AUTH_AUDIENCE": better_auth,
    }
    with served(directory, count=1, **env) as (server,):
        yield Api(url=server.base_url, database=database)


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=TIMEOUT) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assert_invalid_token(response: httpx.Response, token: str, description: str) -> None:
    """401 problem with an RFC 6750 challenge that repeats no part of the token."""
    body = assert_problem(response, 401)
    assert body["detail"] == description
    challenge = response.headers["www-authenticate"]
    assert challenge == f'Bearer error="invalid_token", error_description="{description}"'
    for part in (token, *token.split(".")):
        assert part not in challenge
        assert part not in response.text


# --- the tokens Better Auth issues ---------------------------------------------------------------


def test_better_auth_issues_eddsa_jwts_for_the_signed_up_user(
    better_auth: str, accounts: Accounts
) -> None:
    for account in (accounts.alice, accounts.bob):
        header = jwt.get_unverified_header(account.token)
        claims = jwt.decode(account.token, options={"verify_signature": False})
        assert header["alg"] == "EdDSA"
        assert claims["sub"] == account.id  # the id sign-up returned
        # Defaults of the JWT plugin: iss and aud are the baseURL (a string, not a list).
        assert claims["iss"] == better_auth
        assert claims["aud"] == better_auth
        assert claims["exp"] - claims["iat"] == 15 * 60
        # The payload is the session's user: unverified email included.
        assert claims["id"] == account.id and claims["email"] == account.email
        assert claims["emailVerified"] is False

        jwks = httpx.get(f"{better_auth}/api/auth/jwks", timeout=TIMEOUT).json()
        [key] = [key for key in jwks["keys"] if key["kid"] == header["kid"]]
        assert (key["kty"], key["crv"], key["alg"]) == ("OKP", "Ed25519", "EdDSA")


# --- the API with those tokens -----------------------------------------------------------------


def test_the_token_opens_its_own_users_tasks(
    http: httpx.Client, accounts: Accounts, api: Api
) -> None:
    alice = accounts.alice
    created = http.post(
        f"/api/{alice.id}/tasks", json={"title": "Buy milk"}, headers=bearer(alice.token)
    )
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["user_id"] == alice.id and task["title"] == "Buy milk"

    listed = http.get(f"/api/{alice.id}/tasks", headers=bearer(alice.token))
    assert listed.status_code == 200, listed.text
    assert task["id"] in [item["id"] for item in listed.json()["items"]]

    fetched = http.get(f"/api/{alice.id}/tasks/{task['id']}", headers=bearer(alice.token))
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == task

    # Better Auth marks a new sign-up's address unverified: the API must not record it.
    with sqlite3.connect(api.database) as connection:
        rows = connection.execute("SELECT email FROM users WHERE id = ?", (alice.id,)).fetchall()
    assert rows == [(None,)]


def test_the_token_is_forbidden_on_another_users_tasks(
    http: httpx.Client, accounts: Accounts
) -> None:
    alice, bob = accounts.alice, accounts.bob
    for response in (
        http.get(f"/api/{bob.id}/tasks", headers=bearer(alice.token)),
        http.post(f"/api/{bob.id}/tasks", json={"title": "x"}, headers=bearer(alice.token)),
    ):
        assert_problem(response, 403)
    # Bob's own token works on his path, and nothing was written there.
    own = http.get(f"/api/{bob.id}/tasks", headers=bearer(bob.token))
    assert own.status_code == 200, own.text
    assert own.json()["items"] == []


def test_a_token_with_a_flipped_signature_character_is_401(
    http: httpx.Client, accounts: Accounts
) -> None:
    alice = accounts.alice
    header, payload, signature = alice.token.split(".")
    # A character in the middle: the last one carries padding bits that may not count.
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    tampered = f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    assert tampered != alice.token
    for response in (
        http.get(f"/api/{alice.id}/tasks", headers=bearer(tampered)),
        http.post(f"/api/{alice.id}/tasks", json={"title": "x"}, headers=bearer(tampered)),
    ):
        assert_invalid_token(response, tampered, "The token signature is invalid")


def test_a_token_with_an_edited_payload_is_401(http: httpx.Client, accounts: Accounts) -> None:
    alice, bob = accounts.alice, accounts.bob
    header, payload, signature = alice.token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims.update(sub=bob.id, id=bob.id, email=bob.email)  # Alice poses as Bob
    forged = f"{header}.{b64url_encode(json.dumps(claims).encode())}.{signature}"
    response = http.post(f"/api/{bob.id}/tasks", json={"title": "x"}, headers=bearer(forged))
    assert_invalid_token(response, forged, "The token signature is invalid")
    assert http.get(f"/api/{bob.id}/tasks", headers=bearer(bob.token)).json()["items"] == []


def test_no_token_is_401(http: httpx.Client, accounts: Accounts) -> None:
    response = http.get(f"/api/{accounts.alice.id}/tasks")
    body = assert_problem(response, 401)
    assert "bearer token" in body["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
