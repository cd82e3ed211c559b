"""HTTP routes of the change feed. No SQL here: each route calls repository functions.

`/sync` answers what changed; `/events` only says *that* something changed (the sequence it
reached), so a lost event costs nothing: the client fetches `/sync` on each event, on
`resync`, and when its stream (re)opens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from todo_api.auth.dependencies import (
    Owner,
    Principal,
    UserIdPath,
    authorize,
    require_owner_on_every_route,
)
from todo_api.platform.events import Closed, Hub, Resync, Subscription, TooManySubscribers
from todo_api.platform.http.dependencies import DatabaseDep, SettingsDep
from todo_api.platform.http.openapi import operation_id
from todo_api.platform.http.problems import responses
from todo_api.platform.http.responses import json_response
from todo_api.sync import repository
from todo_api.sync.errors import InvalidTicket, TicketOfAnotherUser, TooManyStreams
from todo_api.sync.schemas import EventsTicket, LabelChange, ListChange, SyncPage, TaskChange
from todo_api.sync.tokens import Position

router = APIRouter(
    prefix="/api/{user_id}",
    tags=["sync"],
    responses=responses(401, 403),
    generate_unique_id_function=operation_id,
)

RETRY_MILLISECONDS = 3000
# How long a stream's start waits for its process's listener (connecting: tens of ms).
LISTENER_WAIT_SECONDS = 5.0
_CHANGE: dict[str, type[TaskChange | ListChange | LabelChange]] = {
    "task": TaskChange,
    "list": ListChange,
    "label": LabelChange,
}


@router.get(
    "/sync",
    summary="What changed since a sync token (without one: everything)",
    description="Follow `next_token` while `has_more`; keep the last one and pass it next "
    "time. Deletions arrive as `deleted: true` with `data: null`. A token older than the "
    "kept deletions (SYNC_RETENTION_SECONDS) answers 410 `/problems/sync-token-expired`: "
    "sync again without a token.",
    response_model=SyncPage,
    responses=responses(400, 410, 422, 503),
)
async def sync(
    owner: Owner,
    db: DatabaseDep,
    settings: SettingsDep,
    token: Annotated[
        str | None,
        Query(description="`next_token` of the previous answer; omit for a full sync"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many changes")] = 500,
) -> Response:
    secret = settings.cursor_secret.get_secret_value().encode()
    position = Position.decode(token, owner.user_id, secret) if token is not None else None
    page = await repository.read_page(db, user_id=owner.user_id, position=position, limit=limit)
    changes = [_change(change) for change in page.changes]
    return json_response(
        SyncPage.model_construct(
            changes=changes,
            next_token=page.next.encode(owner.user_id, secret),
            has_more=page.has_more,
        )
    )


def _change(change: repository.Change) -> TaskChange | ListChange | LabelChange:
    # Built from rows the repository read: no second validation.
    fields: dict[str, Any] = {
        "kind": change.kind,
        "id": change.id,
        "change_seq": change.change_seq,
        "deleted": change.data is None,
        "data": change.data,
    }
    return _CHANGE[change.kind].model_construct(**fields)


@router.post(
    "/events/ticket",
    summary="A single-use ticket for one events stream (for EventSource)",
    description="`EventSource` cannot send an Authorization header, and a long-lived token "
    "must not go into a URL: get a ticket with the token, then open "
    "`…/events?ticket=…` within `expires_in` seconds.",
    response_model=EventsTicket,
    responses=responses(422, 503),
)
async def create_ticket(owner: Owner, db: DatabaseDep) -> Response:
    ticket = await repository.create_ticket(db, user_id=owner.user_id, email=owner.email)
    return json_response(EventsTicket(ticket=ticket, expires_in=repository.TICKET_SECONDS))


async def authorize_stream(
    request: Request,
    user_id: UserIdPath,
    db: DatabaseDep,
    ticket: Annotated[
        str | None,
        Query(
            description="From POST …/events/ticket; instead of the Authorization header",
            max_length=128,
        ),
    ] = None,
) -> Principal:
    """`Owner` for the events stream: the bearer token, or a ticket."""
    if ticket is None:
        return await authorize(request, user_id)
    holder = await repository.use_ticket(db, ticket)
    if holder is None:
        raise InvalidTicket()
    if holder != user_id:
        raise TicketOfAnotherUser()
    return Principal(user_id=holder)


@dataclass(frozen=True)
class Stream:
    subscription: Subscription
    at: int  # the user's change_seq when the stream began


async def subscribed(
    request: Request, owner: Annotated[Principal, Depends(authorize_stream)], db: DatabaseDep
) -> AsyncIterator[Stream]:
    hub: Hub = request.app.state.events
    try:
        subscription = hub.subscribe(owner.user_id)
    except TooManySubscribers as error:
        raise TooManyStreams(str(error)) from None
    try:
        # Once the process hears notifications (a change committed before it does would be
        # lost; if it cannot connect yet, its first connection is a resync), the watch and
        # the starting sequence, before the response starts: a later change is published to
        # this stream, an earlier one is in what the client's sync on `open` sees.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LISTENER_WAIT_SECONDS):
                await hub.wait_connected()
        at = await repository.watch(
            db, user_id=owner.user_id, email=owner.email, process_id=request.app.state.process_id
        )
        yield Stream(subscription, at)
    finally:
        subscription.close()


def _changed(seq: int) -> ServerSentEvent:
    return ServerSentEvent(id=str(seq), event="changed", data={"change_seq": seq})


@router.get(
    "/events",
    summary="A stream of the user's changes (Server-Sent Events)",
    description="`event: changed` with `id` and `data.change_seq` after each committed change "
    "(fetch `/sync` then); `event: resync` when notifications may have been lost (fetch "
    "`/sync`); a `: ping` comment every 15 s. With `Last-Event-ID` behind the current "
    "sequence, one `changed` comes at once. Authorization header, or `?ticket=`.",
    response_class=EventSourceResponse,
    responses=responses(422, 429, 503),
)
async def events(
    stream: Annotated[Stream, Depends(subscribed)],
    last_event_id: Annotated[
        str | None, Header(description="The last `id` received (sent by EventSource)")
    ] = None,
) -> AsyncIterable[ServerSentEvent]:
    yield ServerSentEvent(retry=RETRY_MILLISECONDS, comment="connected")
    subscription, sent = stream.subscription, stream.at
    known = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    if known is not None and known < sent:
        yield _changed(sent)
    while True:
        item = await subscription.next()
        if isinstance(item, Closed):
            return
        if isinstance(item, Resync):
            yield ServerSentEvent(event="resync", data={"reason": item.reason})
        elif item.seq > sent:
            sent = item.seq
            yield _changed(sent)


require_owner_on_every_route(router, also=(authorize_stream,))
