"""HTTP routes for a user's tasks. No SQL here: each route calls one data-access function."""

from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Body, Query, Response, status

from todo_api import repository
from todo_api.api.deps import Owner, SessionDep
from todo_api.models import CompletionSet, TaskCreate, TaskPage, TaskRead, TaskUpdate
from todo_api.pagination import Cursor, InvalidCursor
from todo_api.problems import BadRequest, NotFound, responses

router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"])

TaskId = Annotated[uuid.UUID, "task id"]
# Every route can meet invalid input and a database outage.
COMMON = (422, 503)


def _missing(task_id: uuid.UUID) -> NotFound:
    # Identical whether the task never existed or belongs to someone else: no existence leak.
    return NotFound(f"No task {task_id} for this user")


@router.get(
    "",
    summary="List tasks, newest first",
    response_model=TaskPage,
    responses=responses(400, *COMMON),
)
async def list_tasks(
    user_id: Owner,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="`next_cursor` from the previous page"),
    ] = None,
) -> TaskPage:
    try:
        after = Cursor.decode(cursor) if cursor else None
    except InvalidCursor:
        raise BadRequest("cursor is malformed; pass next_cursor from a previous page") from None
    items, next_cursor = await repository.list_tasks(
        session, user_id=user_id, limit=limit, after=after
    )
    return TaskPage(items=items, next_cursor=next_cursor.encode() if next_cursor else None)


@router.post(
    "",
    summary="Create a task",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskRead,
    responses=responses(409, 413, 415, *COMMON),
)
async def create_task(
    user_id: Owner, session: SessionDep, data: TaskCreate, response: Response
) -> TaskRead:
    task = await repository.create_task(session, user_id=user_id, data=data)
    response.headers["Location"] = f"/api/{quote(user_id, safe='')}/tasks/{task.id}"
    return task


@router.get(
    "/{task_id}", summary="Get a task", response_model=TaskRead, responses=responses(404, *COMMON)
)
async def get_task(user_id: Owner, task_id: uuid.UUID, session: SessionDep) -> TaskRead:
    task = await repository.get_task(session, user_id=user_id, task_id=task_id)
    if task is None:
        raise _missing(task_id)
    return task


@router.put(
    "/{task_id}",
    summary="Replace a task (omitted optional fields reset to their defaults)",
    response_model=TaskRead,
    responses=responses(404, 413, 415, *COMMON),
)
async def replace_task(
    user_id: Owner, task_id: uuid.UUID, session: SessionDep, data: TaskCreate
) -> TaskRead:
    task = await repository.replace_task(session, user_id=user_id, task_id=task_id, data=data)
    if task is None:
        raise _missing(task_id)
    return task


@router.patch(
    "/{task_id}",
    summary="Update some fields of a task",
    response_model=TaskRead,
    responses=responses(404, 413, 415, *COMMON),
)
async def update_task(
    user_id: Owner, task_id: uuid.UUID, session: SessionDep, data: TaskUpdate
) -> TaskRead:
    task = await repository.update_task(
        session, user_id=user_id, task_id=task_id, changes=data.changes()
    )
    if task is None:
        raise _missing(task_id)
    return task


@router.delete(
    "/{task_id}",
    summary="Delete a task",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(404, *COMMON),
)
async def delete_task(user_id: Owner, task_id: uuid.UUID, session: SessionDep) -> Response:
    if not await repository.delete_task(session, user_id=user_id, task_id=task_id):
        raise _missing(task_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{task_id}/complete",
    summary="Toggle completion, or set it with a body",
    description='Without a body the task\'s `completed` flips. With `{"completed": true|false}` '
    "it is set to that value, which makes retries safe.",
    response_model=TaskRead,
    responses=responses(404, 413, 415, *COMMON),
)
async def complete_task(
    user_id: Owner,
    task_id: uuid.UUID,
    session: SessionDep,
    body: Annotated[CompletionSet | None, Body()] = None,
) -> TaskRead:
    task = await repository.set_completion(
        session,
        user_id=user_id,
        task_id=task_id,
        completed=body.completed if body is not None else None,
    )
    if task is None:
        raise _missing(task_id)
    return task
