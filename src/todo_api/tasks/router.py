"""HTTP routes for a user's tasks. No SQL here: each route calls one data-access function.

Fixed paths (`/stats`) are declared before `/{task_id}`: routes match in order, by path only,
so a later `/stats` would be swallowed by `/{task_id}` and answered 422.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, Header, Query, Response, status
from fastapi.routing import APIRoute
from pydantic import AfterValidator, AwareDatetime, BaseModel

from todo_api.auth.dependencies import Owner, authorize
from todo_api.platform.http.conditional import (
    IfMatchHeader,
    IfNoneMatchHeader,
    etag,
    if_match_versions,
)
from todo_api.platform.http.conditional import none_match as if_none_match_hits
from todo_api.platform.http.cursor import Cursor, InvalidCursor
from todo_api.platform.http.dependencies import DatabaseDep, SettingsDep
from todo_api.platform.http.openapi import REQUIRED_MARK, headers, operation_id
from todo_api.platform.http.problems import BadRequest, responses
from todo_api.platform.http.text import STORABLE_PATTERN, storable_text
from todo_api.tasks import repository
from todo_api.tasks.errors import TaskNotFound
from todo_api.tasks.filters import TaskFilter
from todo_api.tasks.schemas import (
    TASK_JSON,
    CompletionSet,
    Deleted,
    TaskCreate,
    TaskPage,
    TaskRead,
    TaskStats,
    TaskUpdate,
)
from todo_api.tasks.sorting import ALLOWED_SORTS, DEFAULT_SORT, TaskSort, TaskSortField, parse_sort

# Every route declares `Owner` (checked at import, below): authorisation is never left to a
# route remembering it, and is resolved once per request (a router-level dependency would be
# solved a second time on every request).
router = APIRouter(
    prefix="/api/{user_id}/tasks",
    tags=["tasks"],
    responses=responses(401, 403),
    # Set here too: the app adds these routes to its own list rather than including the router.
    generate_unique_id_function=operation_id,
)

# Declared required, checked by the route itself (to answer with its own 400 problem).
REQUIRED = {REQUIRED_MARK: True}

# Every route can meet invalid input and a database outage.
COMMON = (422, 503)
BODY = (400, 413, 415)  # 400: the body is not JSON or not UTF-8
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified (ETag matched)", **headers("ETag")}
}
# A single task's answer carries its version as ETag.
WITH_ETAG: dict[int | str, dict[str, Any]] = {200: headers("ETag")}
CREATED: dict[int | str, dict[str, Any]] = {201: headers("ETag", "Location", "Idempotent-Replayed")}


def _json(
    value: BaseModel | TaskRead,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    *,
    exclude_unset: bool = False,
) -> Response:
    # Serialised straight from the value: routes return a Response, so FastAPI does not
    # validate a second time what the data layer built (response_model still documents it).
    if isinstance(value, TaskRead):
        body = TASK_JSON.dump_json(value)
    else:
        body = value.model_dump_json(exclude_unset=exclude_unset).encode()
    return Response(body, status_code, headers, "application/json")


def _task(task: TaskRead | None, task_id: uuid.UUID) -> Response:
    if task is None:
        raise TaskNotFound(task_id)
    return _json(task, headers={"ETag": etag(task)})


# --- listing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    limit: int
    sort: TaskSort
    filters: TaskFilter
    after: Cursor[TaskSortField] | None
    include_total: bool


async def listing(
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
    cursor: Annotated[
        str | None,
        Query(
            max_length=2048, description="`next_cursor` of the previous page (same sort/filters)"
        ),
    ] = None,
    sort: Annotated[
        str,
        Query(
            description="Order: a field, `-` prefix for descending.",
            json_schema_extra={"enum": list(ALLOWED_SORTS)},
        ),
    ] = str(DEFAULT_SORT),
    completed: Annotated[bool | None, Query(description="Only completed or pending tasks")] = None,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="Case-insensitive search in title and description",
            json_schema_extra={"pattern": STORABLE_PATTERN},
        ),
        AfterValidator(lambda value: storable_text(value) if value is not None else None),
    ] = None,
    updated_since: Annotated[
        AwareDatetime | None,
        Query(description="Only tasks changed at or after this RFC 3339 time (incremental sync)"),
    ] = None,
    include_total: Annotated[
        bool, Query(description="Add `total`: tasks matching the filters")
    ] = False,
) -> Listing:
    try:
        order = parse_sort(sort)
    except ValueError as error:
        raise BadRequest(str(error)) from None
    filters = TaskFilter(completed=completed, q=q, updated_since=updated_since)
    after = None
    if cursor:
        secret = settings.cursor_secret.get_secret_value().encode()
        try:
            after = Cursor.decode(cursor, secret, sort=order, scope=filters.fingerprint())
        except InvalidCursor as error:
            raise BadRequest(f"{error}; pass next_cursor from a previous page") from None
    return Listing(
        limit=limit, sort=order, filters=filters, after=after, include_total=include_total
    )


@router.get(
    "",
    summary="List tasks: filter, search, sort, paginate",
    response_model=TaskPage,
    response_model_exclude_unset=True,
    responses=responses(400, *COMMON),
)
async def list_tasks(
    owner: Owner,
    db: DatabaseDep,
    settings: SettingsDep,
    query: Annotated[Listing, Depends(listing)],
) -> Response:
    page = await repository.list_tasks(
        db,
        user_id=owner.user_id,
        limit=query.limit,
        sort=query.sort,
        filters=query.filters,
        after=query.after,
        include_total=query.include_total,
    )
    secret = settings.cursor_secret.get_secret_value().encode()
    result = TaskPage.model_construct(
        items=page.items,
        next_cursor=page.next_cursor.encode(secret) if page.next_cursor else None,
    )
    if page.total is not None:
        result.total = page.total
    return _json(result, exclude_unset=True)  # `total` only when asked for


@router.get(
    "/stats",
    summary="Count the user's tasks: total, completed, pending",
    response_model=TaskStats,
    responses=responses(*COMMON),
)
async def task_stats(owner: Owner, db: DatabaseDep) -> Response:
    stats = await repository.task_stats(db, user_id=owner.user_id)
    return _json(TaskStats(total=stats.total, completed=stats.completed, pending=stats.pending))


@router.delete(
    "",
    summary="Delete all completed (or all pending) tasks",
    description="`completed` is required: a request that would delete every task is refused.",
    response_model=Deleted,
    responses=responses(400, *COMMON),
)
async def delete_tasks(
    owner: Owner,
    db: DatabaseDep,
    completed: Annotated[
        bool | None, Query(description="Which tasks to delete", json_schema_extra=REQUIRED)
    ] = None,
) -> Response:
    if completed is None:
        raise BadRequest("refusing to delete every task: pass completed=true (or completed=false)")
    deleted = await repository.delete_tasks(db, user_id=owner.user_id, completed=completed)
    return _json(Deleted(deleted=deleted))


# --- one task ------------------------------------------------------------------------------------


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retrying with the same key and body within 24 h returns the first 201 "
        "instead of creating another task; the same key with another body is a 422.",
    ),
]


@router.post(
    "",
    summary="Create a task",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskRead,
    responses=CREATED | responses(409, *BODY, *COMMON),
)
async def create_task(
    owner: Owner,
    db: DatabaseDep,
    settings: SettingsDep,
    data: TaskCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    user_id = owner.user_id
    answer_headers = {}
    if idempotency_key is None:
        task = await repository.create_task(db, user_id=user_id, data=data, email=owner.email)
    else:
        task, replayed = await repository.create_task_once(
            db,
            user_id=user_id,
            data=data,
            key=idempotency_key,
            ttl=timedelta(hours=settings.idempotency_ttl_hours),
            email=owner.email,
        )
        if replayed:
            answer_headers["Idempotent-Replayed"] = "true"
    answer_headers["Location"] = f"/api/{quote(user_id, safe='')}/tasks/{task.id}"
    answer_headers["ETag"] = etag(task)
    return _json(task, status.HTTP_201_CREATED, answer_headers)


@router.get(
    "/{task_id}",
    summary="Get a task",
    response_model=TaskRead,
    responses=WITH_ETAG | NOT_MODIFIED | responses(400, 404, *COMMON),
)
async def get_task(
    owner: Owner, task_id: uuid.UUID, db: DatabaseDep, if_none_match: IfNoneMatchHeader = None
) -> Response:
    task = await repository.get_task(db, user_id=owner.user_id, task_id=task_id)
    if task is not None and if_none_match_hits(if_none_match, task):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag(task)})
    return _task(task, task_id)


@router.put(
    "/{task_id}",
    summary="Replace a task (omitted optional fields reset to their defaults)",
    response_model=TaskRead,
    responses=WITH_ETAG | responses(400, 404, 412, *BODY, *COMMON),
)
async def replace_task(
    owner: Owner,
    task_id: uuid.UUID,
    db: DatabaseDep,
    data: TaskCreate,
    if_match: IfMatchHeader = None,
) -> Response:
    task = await repository.replace_task(
        db, user_id=owner.user_id, task_id=task_id, data=data, if_match=if_match_versions(if_match)
    )
    return _task(task, task_id)


@router.patch(
    "/{task_id}",
    summary="Update some fields of a task",
    response_model=TaskRead,
    responses=WITH_ETAG | responses(400, 404, 412, *BODY, *COMMON),
)
async def update_task(
    owner: Owner,
    task_id: uuid.UUID,
    db: DatabaseDep,
    data: TaskUpdate,
    if_match: IfMatchHeader = None,
) -> Response:
    task = await repository.update_task(
        db,
        user_id=owner.user_id,
        task_id=task_id,
        changes=data.changes(),
        if_match=if_match_versions(if_match),
    )
    return _task(task, task_id)


@router.delete(
    "/{task_id}",
    summary="Delete a task",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(400, 404, 412, *COMMON),
)
async def delete_task(
    owner: Owner, task_id: uuid.UUID, db: DatabaseDep, if_match: IfMatchHeader = None
) -> Response:
    deleted = await repository.delete_task(
        db, user_id=owner.user_id, task_id=task_id, if_match=if_match_versions(if_match)
    )
    if not deleted:
        raise TaskNotFound(task_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{task_id}/complete",
    summary="Toggle completion, or set it with a body",
    description='Without a body the task\'s `completed` flips. With `{"completed": true|false}` '
    "it is set to that value, which makes retries safe.",
    response_model=TaskRead,
    responses=WITH_ETAG | responses(400, 404, 412, *BODY, *COMMON),
)
async def complete_task(
    owner: Owner,
    task_id: uuid.UUID,
    db: DatabaseDep,
    body: Annotated[CompletionSet | None, Body()] = None,
    if_match: IfMatchHeader = None,
) -> Response:
    task = await repository.set_completion(
        db,
        user_id=owner.user_id,
        task_id=task_id,
        completed=body.completed if body is not None else None,
        if_match=if_match_versions(if_match),
    )
    return _task(task, task_id)


def _every_route_authorises() -> None:
    for route in router.routes:
        assert isinstance(route, APIRoute)
        calls = {dependency.call for dependency in route.dependant.dependencies}
        if authorize not in calls:
            raise RuntimeError(f"route {route} does not declare Owner: it would be open to all")


_every_route_authorises()
