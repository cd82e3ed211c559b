"""HTTP routes for a user's labels. No SQL here: each route calls one repository function."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Response, status

from todo_api.auth.dependencies import Owner, require_owner_on_every_route
from todo_api.labels import repository
from todo_api.labels.errors import LabelNotFound
from todo_api.labels.schemas import LabelCreate, LabelPage, LabelRead, LabelUpdate
from todo_api.platform.http.conditional import (
    IfMatchHeader,
    IfNoneMatchHeader,
    etag,
    if_match_versions,
    none_match,
)
from todo_api.platform.http.dependencies import DatabaseDep, SettingsDep
from todo_api.platform.http.openapi import headers, operation_id
from todo_api.platform.http.problems import quota_responses, responses
from todo_api.platform.http.responses import json_response

router = APIRouter(
    prefix="/api/{user_id}/labels",
    tags=["labels"],
    responses=responses(401, 403),
    generate_unique_id_function=operation_id,
)

COMMON = (422, 503)
BODY = (400, 413, 415)
WITH_ETAG: dict[int | str, dict[str, Any]] = {200: headers("ETag")}
LabelIdPath = Annotated[uuid.UUID, Path(description="A label id")]


def _one(found: LabelRead | None, label_id: uuid.UUID) -> Response:
    if found is None:
        raise LabelNotFound(label_id)
    return json_response(found, headers={"ETag": etag(found)})


@router.get(
    "",
    summary="All of the user's labels, by name (ignoring case)",
    response_model=LabelPage,
    responses=responses(*COMMON),
)
async def list_labels(owner: Owner, db: DatabaseDep) -> Response:
    found = await repository.all_labels(db, user_id=owner.user_id)
    return json_response(LabelPage.model_construct(items=found))


@router.post(
    "",
    summary="Create a label",
    description="A name the user's other labels already have, ignoring case and Unicode "
    "compatibility forms, is refused (409).",
    status_code=status.HTTP_201_CREATED,
    response_model=LabelRead,
    responses={201: headers("ETag", "Location")}
    | responses(*BODY, 409, *COMMON)
    | quota_responses(),
)
async def create_label(
    owner: Owner, db: DatabaseDep, settings: SettingsDep, data: LabelCreate
) -> Response:
    created = await repository.create_label(
        db,
        user_id=owner.user_id,
        name=data.name,
        color=data.color,
        limit=settings.quota_labels_per_user,
        email=owner.email,
    )
    location = f"/api/{quote(owner.user_id, safe='')}/labels/{created.id}"
    return json_response(
        created, status.HTTP_201_CREATED, {"ETag": etag(created), "Location": location}
    )


@router.get(
    "/{label_id}",
    summary="Get a label",
    response_model=LabelRead,
    responses=WITH_ETAG
    | {304: {"description": "Not Modified", **headers("ETag")}}
    | responses(400, 404, *COMMON),
)
async def get_label(
    owner: Owner,
    label_id: LabelIdPath,
    db: DatabaseDep,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    found = await repository.get_label(db, user_id=owner.user_id, label_id=label_id)
    if found is not None and none_match(if_none_match, found):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag(found)})
    return _one(found, label_id)


@router.patch(
    "/{label_id}",
    summary="Rename or recolour a label",
    response_model=LabelRead,
    responses=WITH_ETAG | responses(*BODY, 404, 409, 412, *COMMON),
)
async def update_label(
    owner: Owner,
    label_id: LabelIdPath,
    db: DatabaseDep,
    data: LabelUpdate,
    if_match: IfMatchHeader = None,
) -> Response:
    found = await repository.update_label(
        db,
        user_id=owner.user_id,
        label_id=label_id,
        changes=data.changes(),
        if_match=if_match_versions(if_match),
    )
    return _one(found, label_id)


@router.delete(
    "/{label_id}",
    summary="Delete a label, taking it off every task that carries it",
    description="Each of those tasks gets a new version (its ETag changes).",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(400, 404, 412, *COMMON),
)
async def delete_label(
    owner: Owner, label_id: LabelIdPath, db: DatabaseDep, if_match: IfMatchHeader = None
) -> Response:
    deleted = await repository.delete_label(
        db, user_id=owner.user_id, label_id=label_id, if_match=if_match_versions(if_match)
    )
    if not deleted:
        raise LabelNotFound(label_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


require_owner_on_every_route(router)
