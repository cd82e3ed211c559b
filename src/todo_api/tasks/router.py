"""HTTP routes for a user's tasks. No SQL here: each route calls one data-access function.

Fixed paths (`/stats`) are declared before `/{task_id}`: routes match in order, by path only,
so a later `/stats` would be swallowed by `/{task_id}` and answered 422.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response, status
from pydantic import AfterValidator, AwareDatetime, BaseModel

from todo_api.auth.dependencies import Owner, require_owner_on_every_route
from todo_api.lists.errors import BadAnchor, BothAnchors
from todo_api.platform.database.ordering import AnchorNotFound
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
from todo_api.platform.http.problems import (
    BadRequest,
    FieldError,
    UnprocessableContent,
    quota_responses,
    responses,
)
from todo_api.platform.http.text import STORABLE_PATTERN, storable_text
from todo_api.platform.zones import ZONE_NAME_MAX, checked_zone
from todo_api.settings import Settings
from todo_api.tasks import repository
from todo_api.tasks.errors import TaskNotFound
from todo_api.tasks.filters import DueFilter, TaskFilter
from todo_api.tasks.repository import resolve_list
from todo_api.tasks.schemas import (
    PRIORITY_NUMBER,
    TASK_JSON,
    TASKS_JSON,
    BulkChange,
    BulkResult,
    CompletionSet,
    Deleted,
    ListRef,
    Priority,
    TaskCreate,
    TaskMove,
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


def _query_error(field: str, message: str, kind: str) -> UnprocessableContent:
    return UnprocessableContent(
        f"{field}: {message}",
        errors=[FieldError(location="query", field=field, message=message, type=kind)],
    )


def _ids(field: str, value: str | None) -> tuple[uuid.UUID, ...]:
    if value is None:
        return ()
    try:
        ids = tuple(uuid.UUID(part) for part in value.split(","))
    except ValueError:  # the pattern lets through 36 dashes, 33 hex digits…
        raise _query_error(field, "must be comma-separated label ids", "uuid_parsing") from None
    if len(set(ids)) != len(ids):
        raise _query_error(field, "lists a label twice", "duplicate")
    return ids


def owner_id(request: Request) -> str:
    return str(request.path_params["user_id"])


# Up to 50 label ids (UUIDs, with or without dashes), comma-separated.
ID_LIST_PATTERN = r"^[0-9a-fA-F-]{32,36}(,[0-9a-fA-F-]{32,36}){0,49}$"
ID_LIST_MAX = 50 * 37


async def listing(
    request: Request,
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
    list_id: Annotated[
        ListRef | None, Query(description="Only the tasks of this list (a list id or `inbox`)")
    ] = None,
    priority: Annotated[
        list[Priority] | None, Query(description="Only these priorities (repeatable)")
    ] = None,
    labels_any: Annotated[
        str | None,
        Query(
            description="Comma-separated label ids: tasks with at least one of them",
            pattern=ID_LIST_PATTERN,
            max_length=ID_LIST_MAX,
        ),
    ] = None,
    labels_all: Annotated[
        str | None,
        Query(
            description="Comma-separated label ids: tasks with all of them",
            pattern=ID_LIST_PATTERN,
            max_length=ID_LIST_MAX,
        ),
    ] = None,
    due: Annotated[
        DueFilter | None,
        Query(
            description="overdue (open and past due), today, tomorrow, next_7_days (today and "
            "the 6 days after), none (no due date), any; in the user's zone or `tz`"
        ),
    ] = None,
    due_from: Annotated[
        date | None, Query(description="Due on or after this local date (YYYY-MM-DD)")
    ] = None,
    due_to: Annotated[
        date | None, Query(description="Due on or before this local date (YYYY-MM-DD)")
    ] = None,
    tz: Annotated[
        str | None,
        Query(
            description="IANA zone to evaluate due filters in (default: the user's)",
            max_length=ZONE_NAME_MAX,
        ),
    ] = None,
) -> Listing:
    try:
        order = parse_sort(sort)
    except ValueError as error:
        raise BadRequest(str(error)) from None
    if order.field is TaskSortField.POSITION and list_id is None:
        raise BadRequest("sort=position orders the tasks of one list: pass list_id too")
    if tz is not None:
        try:
            checked_zone(tz)
        except ValueError as error:
            raise _query_error("tz", str(error), "invalid_zone") from None
    if due_from is not None and due_to is not None and due_from > due_to:
        raise _query_error("due_to", "due_to is before due_from", "empty_range")
    filters = TaskFilter(
        completed=completed,
        q=q,
        updated_since=updated_since,
        list_id=resolve_list(list_id, owner_id(request)) if list_id is not None else None,
        priorities=tuple(sorted({PRIORITY_NUMBER[value] for value in priority or ()})),
        labels_any=_ids("labels_any", labels_any),
        labels_all=_ids("labels_all", labels_all),
        due=due,
        due_from=due_from,
        due_to=due_to,
        tz=tz,
    )
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
    summary="Count the user's tasks: total, completed, pending, overdue, due today",
    response_model=TaskStats,
    responses=responses(*COMMON),
)
async def task_stats(owner: Owner, db: DatabaseDep) -> Response:
    stats = await repository.task_stats(db, user_id=owner.user_id)
    return _json(
        TaskStats(
            total=stats.total,
            completed=stats.completed,
            pending=stats.pending,
            overdue=stats.overdue,
            due_today=stats.due_today,
        )
    )


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


@router.post(
    "/bulk",
    summary="Change up to 200 tasks at once, all or nothing",
    description="Sets the fields in `set` (absent ones stay; `due: null` clears), moves the "
    "tasks to the end of `set.list_id`, adds and removes labels. One id that is not one of "
    "the user's tasks: 404 naming it, and nothing changes.",
    response_model=BulkResult,
    responses=responses(404, 409, *BODY, *COMMON) | quota_responses(),
)
async def bulk_change(
    owner: Owner, db: DatabaseDep, settings: SettingsDep, data: BulkChange
) -> Response:
    changed = await repository.bulk_change(
        db, user_id=owner.user_id, change=data, quotas=quotas(settings)
    )
    return Response(
        b'{"items":' + TASKS_JSON.dump_json(changed) + b"}", 200, None, "application/json"
    )


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
    responses=CREATED | responses(404, 409, *BODY, *COMMON) | quota_responses(),
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
    task, replayed = await repository.create_task(
        db,
        user_id=user_id,
        data=data,
        quotas=quotas(settings),
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
    responses=WITH_ETAG | responses(400, 404, 409, 412, *BODY, *COMMON) | quota_responses(),
)
async def replace_task(
    owner: Owner,
    task_id: uuid.UUID,
    db: DatabaseDep,
    settings: SettingsDep,
    data: TaskCreate,
    if_match: IfMatchHeader = None,
) -> Response:
    task = await repository.replace_task(
        db,
        user_id=owner.user_id,
        task_id=task_id,
        data=data,
        if_match=if_match_versions(if_match),
        quotas=quotas(settings),
    )
    return _task(task, task_id)


@router.patch(
    "/{task_id}",
    summary="Update some fields of a task",
    response_model=TaskRead,
    responses=WITH_ETAG | responses(400, 404, 409, 412, *BODY, *COMMON) | quota_responses(),
)
async def update_task(
    owner: Owner,
    task_id: uuid.UUID,
    db: DatabaseDep,
    settings: SettingsDep,
    data: TaskUpdate,
    if_match: IfMatchHeader = None,
) -> Response:
    task = await repository.update_task(
        db,
        user_id=owner.user_id,
        task_id=task_id,
        changes=data.changes(),
        if_match=if_match_versions(if_match),
        quotas=quotas(settings),
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


@router.post(
    "/{task_id}/move",
    summary="Move a task: after or before another task of a list, or first",
    description="`list_id` (default: the task's own list) is the destination; `after_id` or "
    "`before_id` a task there (not both); neither puts the task first. Its id stays.",
    response_model=TaskRead,
    responses=WITH_ETAG | responses(400, 404, 412, *BODY, *COMMON),
)
async def move_task(
    owner: Owner,
    task_id: uuid.UUID,
    db: DatabaseDep,
    data: TaskMove,
    if_match: IfMatchHeader = None,
) -> Response:
    if data.after_id is not None and data.before_id is not None:
        raise BothAnchors()
    try:
        task = await repository.move_task(
            db,
            user_id=owner.user_id,
            task_id=task_id,
            list_ref=data.list_id,
            after_id=data.after_id,
            before_id=data.before_id,
            if_match=if_match_versions(if_match),
        )
    except AnchorNotFound as error:
        field = "after_id" if data.after_id is not None else "before_id"
        raise BadAnchor(field, error.args[0], "another task of the destination list") from None
    return _task(task, task_id)


def quotas(settings: Settings) -> repository.Quotas:
    return repository.Quotas(
        tasks=settings.quota_tasks_per_user, labels_per_task=settings.quota_labels_per_task
    )


require_owner_on_every_route(router)
