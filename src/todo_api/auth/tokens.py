"""Bearer-token verification (RFC 6750 bearer tokens carrying RFC 7519 JWTs).

One `TokenVerifier` is built per app (create_app) and shared by every request. It knows which
keys it trusts and which algorithms each key may be used with:

- `AUTH_JWT_SECRET`: a shared secret for HS256/384/512 (RFC 7518 §3.2: an HMAC key must be at
  least as long as the hash, so a 32-byte secret allows HS256 only, 48 bytes adds HS384, ...);
- `AUTH_JWKS_URL`: public keys for RS256, ES256 and EdDSA, fetched from a JWKS document and
  cached (`JwksCache`).

The algorithm is never taken on trust from the token: a token's `alg` only selects among the
algorithms allowed for the configured keys, and each JWKS key is bound to its own algorithm.
So `alg: none` is refused, and so is an HS256 token "signed" with an RSA public key when only
JWKS keys are configured (algorithm confusion).

Error descriptions are fixed sentences: they go into a `WWW-Authenticate` header and a problem
document, and must never echo any part of the token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from jwt import PyJWK
from jwt.exceptions import InvalidSubjectError

from todo_api.settings import Settings
from todo_api.tables.users import USER_ID_PATTERN

log = logging.getLogger("todo_api.auth")

HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}  # algorithm -> minimum key bytes
JWKS_ALGORITHMS = ("RS256", "ES256", "EdDSA")
MIN_SECRET_BYTES = min(HMAC_ALGORITHMS.values())

# An unknown `kid` may mean the provider rotated its keys, or a forged token: refetch the JWKS
# at most this often, so a flood of made-up kids cannot turn into a flood of fetches.
JWKS_MIN_REFRESH_SECONDS = 60.0
# Until a first fetch has succeeded no token can be checked at all: retry sooner.
JWKS_RETRY_UNLOADED_SECONDS = 5.0
# Cached keys older than this are refreshed in the background (the request does not wait),
# so a key the provider withdrew stops being trusted within about this long.
JWKS_MAX_AGE_SECONDS = 300.0
JWKS_TIMEOUT_SECONDS = 5.0
JWKS_MAX_BYTES = 256 * 1024  # a JWKS document is a few keys; anything bigger is not one

# RFC 6750 §3: error_description is limited to these characters (no quote, no backslash).
_UNSAFE_DESCRIPTION = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_USER_ID = re.compile(USER_ID_PATTERN)
# RFC 6750 §2.1 b64token: the only characters a bearer token may have.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class InvalidToken(Exception):
    """The request's token is missing or unusable: answer 401 with this description."""

    def __init__(self, description: str, *, missing: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.missing = missing  # no token at all: RFC 6750 §3.1 says no error code then

    def challenge(self) -> str:
        """The `WWW-Authenticate` value for this error."""
        if self.missing:
            return "Bearer"
        safe = _UNSAFE_DESCRIPTION.sub("?", self.description)
        return f'Bearer error="invalid_token", error_description="{safe}"'


class KeysUnavailable(Exception):
    """The JWKS endpoint cannot be reached and the token's key is not cached (answer 503)."""


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for."""

    user_id: str
    email: str | None
    claims: Mapping[str, Any] = field(repr=False)


def bearer_token(authorization: list[str]) -> str:
    """The token of the request's `Authorization: Bearer …` header (all values given)."""
    if not authorization:
        raise InvalidToken(
            "This API requires a bearer token (Authorization: Bearer <token>)", missing=True
        )
    if len(authorization) > 1:
        raise InvalidToken("The request has more than one Authorization header")
    scheme, _, token = authorization[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        # Another scheme (Basic, …) is no bearer token at all: the bare challenge tells the
        # client which scheme to use (RFC 6750 §3.1).
        raise InvalidToken(
            "This API accepts only bearer tokens (Authorization: Bearer <token>)", missing=True
        )
    token = token.strip()
    if not token:
        raise InvalidToken("The Authorization header has no token after Bearer")
    if not _B64TOKEN.fullmatch(token) or token.count(".") != 2:
        raise InvalidToken("The token is malformed: expected a JWT (three base64url parts)")
    return token


class JwksCache:
    """The keys of one JWKS endpoint, fetched with an async client (the loop never blocks).

    Rules:
    - a known `kid` is answered from memory; when the cache is old a refresh starts in the
      background and the request goes on with the cached key (an unreachable endpoint costs
      nothing to tokens whose key is cached);
    - an unknown `kid` triggers a fetch, at most once per `min_refresh_seconds`; concurrent
      requests share that one fetch;
    - a failed or unusable fetch keeps the keys already cached.
    """

    def __init__(
        self,
        url: str,
        *,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
        min_refresh_seconds: float = JWKS_MIN_REFRESH_SECONDS,
        max_age_seconds: float = JWKS_MAX_AGE_SECONDS,
    ) -> None:
        self.url = url
        self.clock = clock  # replaceable: tests move time forward instead of sleeping
        self._http = http
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._keys: list[PyJWK] = []
        self._loaded_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._last_failed = False
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    def _may_fetch(self) -> bool:
        if self._attempted_at is None:
            return True
        interval = self._min_refresh if self.loaded else JWKS_RETRY_UNLOADED_SECONDS
        return self.clock() - self._attempted_at >= interval

    def _matching(self, kid: str | None, alg: str) -> list[PyJWK]:
        if kid is not None:
            return [key for key in self._keys if key.key_id == kid]
        # No kid: any key of the token's algorithm may have signed it (each is tried).
        return [key for key in self._keys if key.algorithm_name == alg]

    async def keys_for(self, kid: str | None, alg: str) -> list[PyJWK]:
        """The cached keys that may have signed a token with this header (fetching if needed).

        Raises InvalidToken when no key fits, KeysUnavailable when the endpoint could not be
        reached to look for one.
        """
        keys = self._matching(kid, alg)
        if keys:
            self._refresh_if_old()
            return keys
        async with self._lock:
            keys = self._matching(kid, alg)  # another request may have fetched meanwhile
            if not keys and self._may_fetch():
                await self._fetch()
                keys = self._matching(kid, alg)
        if keys:
            return keys
        if self._last_failed:
            raise KeysUnavailable(f"the JWKS at {self.url} could not be fetched")
        raise InvalidToken("The token was signed with a key this API does not know")

    async def refresh(self) -> bool:
        """Fetch now (start-up warm-up); False if the fetch failed."""
        async with self._lock:
            return await self._fetch()

    def _refresh_if_old(self) -> None:
        if self._loaded_at is None or self.clock() - self._loaded_at < self._max_age:
            return
        if self._lock.locked() or self._background or not self._may_fetch():
            return
        task = asyncio.create_task(self.refresh_quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def refresh_quietly(self) -> None:
        # A background task: nobody awaits it, so nothing may escape it unlogged.
        try:
            await self.refresh()
        except Exception:
            log.exception("background JWKS refresh from %s failed", self.url)

    async def _fetch(self) -> bool:
        """One GET of the JWKS document; the lock is held by the caller."""
        self._attempted_at = self.clock()
        try:
            document = await self._download()
            keys = _usable_keys(document)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as error:
            self._last_failed = True
            cached = f"; keeping {len(self._keys)} cached key(s)" if self._keys else ""
            log.warning("cannot refresh the JWKS from %s: %s%s", self.url, error, cached)
            return False
        self._keys = keys
        self._loaded_at = self._attempted_at
        self._last_failed = False
        log.info("loaded %d signing key(s) from %s", len(keys), self.url)
        return True

    async def _download(self) -> Any:
        async with self._http.stream("GET", self.url, headers={"Accept": "application/json"}) as r:
            if r.status_code != 200:
                raise ValueError(f"HTTP {r.status_code}")
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise ValueError(f"document larger than {JWKS_MAX_BYTES} bytes")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError("the document is not JSON") from None

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


def _usable_keys(document: Any) -> list[PyJWK]:
    """The signature keys of a JWKS document whose algorithm is allowed; ValueError if none."""
    raw = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(raw, list):
        raise ValueError('the document has no "keys" list')
    keys = []
    for entry in raw:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = PyJWK(entry)
        except jwt.PyJWTError as error:
            log.debug("skipping JWKS key %r: %s", entry.get("kid"), error)
            continue
        # A symmetric ("oct") key in a public JWKS would let anyone who reads it sign tokens;
        # only the asymmetric algorithms of the allow-list are usable from a JWKS.
        if key.algorithm_name in JWKS_ALGORITHMS:
            keys.append(key)
    if not keys:
        raise ValueError(f"no usable key (allowed algorithms: {', '.join(JWKS_ALGORITHMS)})")
    return keys


# PyJWT's exceptions -> what the client is told. Checked in order: subclasses first.
_DESCRIPTIONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "The token has expired"),
    (jwt.ImmatureSignatureError, "The token is not valid yet (nbf or iat is in the future)"),
    (jwt.InvalidIssuerError, "The token was issued by an issuer this API does not accept"),
    (jwt.InvalidAudienceError, "The token is meant for another audience"),
    (jwt.InvalidSignatureError, "The token signature is invalid"),
    (jwt.InvalidAlgorithmError, "The token's algorithm does not match its key"),
    (jwt.InvalidIssuedAtError, "The token's iat claim is not a number"),
    (InvalidSubjectError, "The token's sub claim is not a string"),
    (jwt.DecodeError, "The token is malformed"),
)


class TokenVerifier:
    """Checks bearer tokens against the configured keys, issuer, audience and clock."""

    def __init__(
        self,
        settings: Settings,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuer = settings.auth_issuer
        self._audience = settings.auth_audience
        self._leeway = settings.auth_leeway_seconds
        self._user_claim = settings.auth_user_claim
        secret = settings.auth_jwt_secret.get_secret_value() if settings.auth_jwt_secret else ""
        self._secret = secret.encode()
        self._hmac = tuple(
            alg for alg, size in HMAC_ALGORITHMS.items() if secret and len(self._secret) >= size
        )
        self._http: httpx.AsyncClient | None = None
        self.jwks: JwksCache | None = None
        if settings.auth_jwks_url:
            if http is None:
                http = httpx.AsyncClient(
                    timeout=JWKS_TIMEOUT_SECONDS,
                    follow_redirects=True,
                    headers={"User-Agent": "todo-api"},
                )
                self._http = http  # ours to close
            self.jwks = JwksCache(settings.auth_jwks_url, http=http, clock=clock)

    @property
    def algorithms(self) -> tuple[str, ...]:
        """Every algorithm a token may use here: the explicit allow-list."""
        return self._hmac + (JWKS_ALGORITHMS if self.jwks else ())

    async def start(self) -> None:
        """Warm the JWKS cache; an unreachable endpoint is logged, not fatal (it may come up
        later, and tokens are refused with 503 meanwhile)."""
        if self.jwks is not None:
            await self.jwks.refresh()

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()
        if self._http is not None:
            await self._http.aclose()

    async def verify(self, token: str) -> Identity:
        """The identity a valid token speaks for; InvalidToken (401) or KeysUnavailable (503)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("The token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            accepted = ", ".join(self.algorithms)
            raise InvalidToken(f"The token's signing algorithm is not accepted (use {accepted})")
        if alg in self._hmac:
            claims = self._decode(token, self._secret, alg)
        else:
            assert self.jwks is not None  # alg is a JWKS algorithm, allowed only with a JWKS
            kid = header.get("kid")
            claims = await self._decode_with_jwks(token, kid if isinstance(kid, str) else None, alg)
        return self._identity(claims)

    async def _decode_with_jwks(self, token: str, kid: str | None, alg: str) -> dict[str, Any]:
        assert self.jwks is not None
        keys = await self.jwks.keys_for(kid, alg)
        for key in keys[:-1]:  # only without a kid can there be several candidates
            try:
                return self._decode(token, key, alg)
            except InvalidToken:
                continue
        return self._decode(token, keys[-1], alg)

    def _decode(self, token: str, key: PyJWK | bytes, alg: str) -> dict[str, Any]:
        # A PyJWK verifies only with its own algorithm; a secret only with the HMAC ones.
        algorithms = [key.algorithm_name] if isinstance(key, PyJWK) else list(self._hmac)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={
                    # A token without exp would be valid forever.
                    "require": ["exp"],
                    # Better Auth always sets aud; it is checked only when we know ours.
                    "verify_aud": self._audience is not None,
                },
            )
        except jwt.MissingRequiredClaimError as error:
            raise InvalidToken(f"The token lacks the required {error.claim} claim") from None
        except jwt.InvalidIssuerError:
            # Which claim, and what this API expects: the usual misconfiguration is a
            # different base URL on the identity provider. The token's value is not repeated.
            raise InvalidToken(
                f"The token's iss claim does not match AUTH_ISSUER (expected {self._issuer!r})"
            ) from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(
                f"The token's aud claim does not include AUTH_AUDIENCE "
                f"(expected {self._audience!r})"
            ) from None
        except jwt.PyJWTError as error:
            for kind, description in _DESCRIPTIONS:
                if isinstance(error, kind):
                    raise InvalidToken(description) from None
            raise InvalidToken("The token is invalid") from None
        return claims

    def _identity(self, claims: dict[str, Any]) -> Identity:
        user_id = claims.get(self._user_claim)
        if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
            raise InvalidToken(f"The token has no usable {self._user_claim} claim (the user id)")
        return Identity(user_id=user_id, email=_email(claims), claims=claims)


def _email(claims: Mapping[str, Any]) -> str | None:
    """The token's email, unless absent, implausible or marked unverified.

    An unverified address could belong to someone else, and users.email is UNIQUE: recording
    it would block the real owner's address. (`email_verified` is OIDC's claim,
    `emailVerified` Better Auth's.)
    """
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email or not 3 <= len(email) <= 320:
        return None
    if claims.get("email_verified") is False or claims.get("emailVerified") is False:
        return None
    if any(ch.isspace() or ord(ch) < 0x20 for ch in email):
        return None
    return email
