"""HTTP routes for a user's lists. No SQL here: each route calls one repository function.

`inbox` names the user's inbox wherever a list id is accepted (path, query, body)."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Response, status

from todo_api.auth.dependencies import Owner, require_owner_on_every_route
from todo_api.lists import repository
from todo_api.lists.errors import BadAnchor, BothAnchors, ListNotFound
from todo_api.lists.schemas import INBOX, ListCreate, ListPage, ListRead, ListRef, ListUpdate, Move
from todo_api.platform.database.ordering import AnchorNotFound
from todo_api.platform.http.conditional import (
    IfMatchHeader,
    IfNoneMatchHeader,
    etag,
    if_match_versions,
    none_match,
)
from todo_api.platform.http.dependencies import DatabaseDep, SettingsDep
from todo_api.platform.http.openapi import headers, operation_id
from todo_api.platform.http.problems import (
    FieldError,
    UnprocessableContent,
    quota_responses,
    responses,
)
from todo_api.platform.http.responses import json_response
from todo_api.tables.lists import inbox_id

router = APIRouter(
    prefix="/api/{user_id}/lists",
    tags=["lists"],
    responses=responses(401, 403),
    generate_unique_id_function=operation_id,
)

COMMON = (422, 503)
BODY = (400, 413, 415)
WITH_ETAG: dict[int | str, dict[str, Any]] = {200: headers("ETag")}
CREATED: dict[int | str, dict[str, Any]] = {201: headers("ETag", "Location")}
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified (ETag matched)", **headers("ETag")}
}
ListIdPath = Annotated[ListRef, Path(description="A list id, or `inbox`")]
LIST_JSON = ListPage.model_fields["items"]  # documents ListRead; serialised below


def resolve(ref: ListRef, user_id: str) -> uuid.UUID:
    return inbox_id(user_id) if ref == INBOX else ref  # type: ignore[return-value]


def _one(found: ListRead | None, ref: ListRef) -> Response:
    if found is None:
        raise ListNotFound(ref)
    return json_response(_bytes(found), headers={"ETag": etag(found)})


def _bytes(value: ListRead) -> bytes:
    return ListPage.__pydantic_serializer__.to_json(ListPage.model_construct(items=[value]))[
        len(b'{"items":[') : -2
    ]


@router.get(
    "",
    summary="All of the user's lists, in order",
    response_model=ListPage,
    responses=responses(*COMMON),
)
async def list_lists(owner: Owner, db: DatabaseDep) -> Response:
    found = await repository.all_lists(db, user_id=owner.user_id, email=owner.email)
    return json_response(ListPage.model_construct(items=found))


@router.post(
    "",
    summary="Create a list (at the end)",
    status_code=status.HTTP_201_CREATED,
    response_model=ListRead,
    responses=CREATED | responses(*BODY, *COMMON) | quota_responses(),
)
async def create_list(
    owner: Owner, db: DatabaseDep, settings: SettingsDep, data: ListCreate
) -> Response:
    created = await repository.create_list(
        db,
        user_id=owner.user_id,
        name=data.name,
        color=data.color,
        limit=settings.quota_lists_per_user,
        email=owner.email,
    )
    location = f"/api/{quote(owner.user_id, safe='')}/lists/{created.id}"
    return json_response(
        _bytes(created), status.HTTP_201_CREATED, {"ETag": etag(created), "Location": location}
    )


@router.get(
    "/{list_id}",
    summary="Get a list",
    response_model=ListRead,
    responses=WITH_ETAG | NOT_MODIFIED | responses(400, 404, *COMMON),
)
async def get_list(
    owner: Owner, list_id: ListIdPath, db: DatabaseDep, if_none_match: IfNoneMatchHeader = None
) -> Response:
    found = await repository.get_list(
        db, user_id=owner.user_id, list_id=resolve(list_id, owner.user_id), email=owner.email
    )
    if found is not None and none_match(if_none_match, found):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag(found)})
    return _one(found, list_id)


@router.patch(
    "/{list_id}",
    summary="Rename or recolour a list",
    response_model=ListRead,
    responses=WITH_ETAG | responses(400, 404, 412, *BODY, *COMMON),
)
async def update_list(
    owner: Owner,
    list_id: ListIdPath,
    db: DatabaseDep,
    data: ListUpdate,
    if_match: IfMatchHeader = None,
) -> Response:
    found = await repository.update_list(
        db,
        user_id=owner.user_id,
        list_id=resolve(list_id, owner.user_id),
        changes=data.changes(),
        if_match=if_match_versions(if_match),
    )
    return _one(found, list_id)


def anchors(move: Move, user_id: str) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    if move.after_id is not None and move.before_id is not None:
        raise BothAnchors()
    after = resolve(move.after_id, user_id) if move.after_id is not None else None
    before = resolve(move.before_id, user_id) if move.before_id is not None else None
    return after, before


@router.post(
    "/{list_id}/move",
    summary="Move a list: after one list, before another, or (neither) first",
    response_model=ListRead,
    responses=WITH_ETAG | responses(400, 404, 412, *BODY, *COMMON),
)
async def move_list(
    owner: Owner, list_id: ListIdPath, db: DatabaseDep, data: Move, if_match: IfMatchHeader = None
) -> Response:
    after, before = anchors(data, owner.user_id)
    try:
        found = await repository.move_list(
            db,
            user_id=owner.user_id,
            list_id=resolve(list_id, owner.user_id),
            after_id=after,
            before_id=before,
            if_match=if_match_versions(if_match),
            email=owner.email,
        )
    except AnchorNotFound as error:
        field = "after_id" if after is not None else "before_id"
        raise BadAnchor(field, error.args[0], "another of the user's lists") from None
    return _one(found, list_id)


class TasksOnDelete(StrEnum):
    DELETE = "delete"
    MOVE = "move"


@router.delete(
    "/{list_id}",
    summary="Delete a list with its tasks, or move its tasks elsewhere first",
    description="`tasks=delete` (default) deletes the list's tasks with it; "
    "`tasks=move&move_to=<list id|inbox>` moves them to the end of that list first. "
    "The inbox cannot be deleted (409).",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(400, 404, 409, 412, *COMMON),
)
async def delete_list(
    owner: Owner,
    list_id: ListIdPath,
    db: DatabaseDep,
    tasks: Annotated[
        TasksOnDelete, Query(description="What happens to the list's tasks")
    ] = TasksOnDelete.DELETE,
    move_to: Annotated[
        ListRef | None, Query(description="With tasks=move: the list that gets them")
    ] = None,
    if_match: IfMatchHeader = None,
) -> Response:
    target = resolve(list_id, owner.user_id)
    destination = None
    if tasks is TasksOnDelete.MOVE:
        if move_to is None:
            raise _query_error("move_to", "tasks=move needs move_to: a list id or inbox", "missing")
        destination = resolve(move_to, owner.user_id)
        if destination == target:
            raise _query_error(
                "move_to", "cannot move the tasks to the list being deleted", "same_list"
            )
    elif move_to is not None:
        raise _query_error("move_to", "move_to is only valid with tasks=move", "unexpected")
    deleted = await repository.delete_list(
        db,
        user_id=owner.user_id,
        list_id=target,
        move_to=destination,
        if_match=if_match_versions(if_match),
    )
    if not deleted:
        raise ListNotFound(list_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _query_error(field: str, message: str, kind: str) -> UnprocessableContent:
    return UnprocessableContent(
        message, errors=[FieldError(location="query", field=field, message=message, type=kind)]
    )


require_owner_on_every_route(router)
