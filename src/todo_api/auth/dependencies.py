"""The authorising dependency: the owner named in the path.

`Owner` is the authorising dependency: it resolves to the path's owner only when the request
may act for that user. With AUTH_MODE=jwt that takes a valid bearer token for exactly that user
(401 without one, 403 for another user's); with AUTH_MODE=none anyone may. Failures are raised
here as problems, never from a middleware.

The graph is kept flat on purpose: FastAPI re-solves every dependency's parameters on every
request, even for a cached result, and each level costs about 8 µs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import StringConstraints, TypeAdapter, ValidationError

from todo_api.auth.tokens import (
    Identity,
    InvalidToken,
    KeysUnavailable,
    TokenVerifier,
    bearer_token,
)
from todo_api.platform.http.problems import (
    RETRY_AFTER_SECONDS,
    Forbidden,
    ServiceUnavailable,
    Unauthorized,
)
from todo_api.tables.users import USER_ID_MAX, USER_ID_PATTERN

# Documented here, checked in `authorize` (after the token): see there.
UserIdPath = Annotated[
    str,
    Path(
        description="The owner's id from the identity provider: 1-128 characters, "
        "no whitespace or control characters.",
        examples=["user_2f9a"],
        json_schema_extra={"pattern": USER_ID_PATTERN, "minLength": 1, "maxLength": USER_ID_MAX},
    ),
]
_VALID_USER_ID: TypeAdapter[str] = TypeAdapter(
    Annotated[str, StringConstraints(pattern=USER_ID_PATTERN, min_length=1, max_length=USER_ID_MAX)]
)


async def _authenticate(request: Request, verifier: TokenVerifier) -> Identity:
    """The verified identity of the request's bearer token."""
    try:
        return await verifier.verify(bearer_token(request.headers.getlist("authorization")))
    except InvalidToken as error:
        raise Unauthorized(
            error.description, headers={"WWW-Authenticate": error.challenge()}
        ) from None
    except KeysUnavailable:
        # Not the client's fault: its token may be fine, the keys to check it are out of reach.
        raise ServiceUnavailable(
            "The identity provider's signing keys are unreachable; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None


def _checked_user_id(user_id: str) -> str:
    try:
        return _VALID_USER_ID.validate_python(user_id)
    except ValidationError as error:
        # The same 422 FastAPI would give for a constrained path parameter.
        raise RequestValidationError(
            [{**detail, "loc": ("path", "user_id")} for detail in error.errors(include_url=False)]
        ) from None


@dataclass(frozen=True)
class Principal:
    """Who the request acts for: the path's owner, with the token's details when there is one."""

    user_id: str
    email: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)


async def authorize(request: Request, user_id: UserIdPath) -> Principal:
    # One flat dependency that checks the path's user_id itself rather than through FastAPI's
    # constraints: those would be checked before the token, and a request without a valid
    # token must get 401 before its path is judged (422), and learn nothing about it.
    verifier: TokenVerifier | None = request.app.state.token_verifier
    if verifier is None:
        return Principal(user_id=_checked_user_id(user_id))
    identity = await _authenticate(request, verifier)
    user_id = _checked_user_id(user_id)
    if identity.user_id != user_id:
        raise Forbidden("The token's user may not access another user's tasks")
    return Principal(user_id=user_id, email=identity.email, claims=identity.claims)


Owner = Annotated[Principal, Depends(authorize)]


def require_owner_on_every_route(
    router: APIRouter, *, also: tuple[Callable[..., Awaitable[Principal]], ...] = ()
) -> None:
    """Called at import by each domain router: every route declares `Owner` (or one of the
    authorisers in `also`, which end in `authorize` or check a credential of their own), so
    authorisation is never left to a route remembering it (and is resolved once per request:
    a router-level dependency would be solved a second time on every request)."""
    authorisers = {authorize, *also}
    for route in router.routes:
        assert isinstance(route, APIRoute)
        calls = set(_calls(route.dependant))
        if not calls & authorisers:
            raise RuntimeError(f"route {route} does not declare Owner: it would be open to all")


def _calls(dependant: Dependant) -> Iterator[object]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)
