"""What can go wrong with a sync or events request, each error with the answer it gets."""

from __future__ import annotations

from todo_api.platform.http.problems import (
    RETRY_AFTER_SECONDS,
    BadRequest,
    Forbidden,
    Gone,
    TooManyRequests,
    Unauthorized,
)

INVALID_SYNC_TOKEN = "/problems/invalid-sync-token"
SYNC_TOKEN_EXPIRED = "/problems/sync-token-expired"


class InvalidSyncToken(BadRequest):
    problem_type = INVALID_SYNC_TOKEN

    def __init__(self, why: str) -> None:
        super().__init__(
            f"The sync token {why}; use a next_token exactly as this service issued it, "
            "or sync without a token to start again"
        )


class SyncTokenExpired(Gone):
    problem_type = SYNC_TOKEN_EXPIRED

    def __init__(self) -> None:
        super().__init__(
            "The sync token is older than the changes this service keeps (deletions are "
            "kept for SYNC_RETENTION_SECONDS); sync without a token to start again"
        )


class InvalidTicket(Unauthorized):
    def __init__(self) -> None:
        super().__init__(
            "The events ticket is unknown, expired or already used; get a new one from "
            "POST /api/{user_id}/events/ticket",
            headers={"WWW-Authenticate": 'Bearer realm="todo-api"'},
        )


class TicketOfAnotherUser(Forbidden):
    def __init__(self) -> None:
        super().__init__("The events ticket was issued for another user")


class TooManyStreams(TooManyRequests):
    def __init__(self, why: str) -> None:
        super().__init__(
            f"{why}; close one (EVENTS_MAX_STREAMS_PER_USER)",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
