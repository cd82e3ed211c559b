"""HTTP routes for the user itself: its profile (time zone) and its limits."""

from __future__ import annotations

from fastapi import APIRouter, Response

from todo_api.auth.dependencies import Owner, require_owner_on_every_route
from todo_api.platform.http.dependencies import DatabaseDep, SettingsDep
from todo_api.platform.http.openapi import operation_id
from todo_api.platform.http.problems import responses
from todo_api.platform.http.responses import json_response
from todo_api.users import repository
from todo_api.users.schemas import Limit, Limits, UserRead, UserUpdate

router = APIRouter(
    prefix="/api/{user_id}",
    tags=["users"],
    responses=responses(401, 403),
    generate_unique_id_function=operation_id,
)


def _read(user: repository.UserRow) -> Response:
    return json_response(
        UserRead(id=user.id, email=user.email, timezone=user.timezone, created_at=user.created_at)
    )


@router.get(
    "",
    summary="Get the user (provisioned with its inbox on first use)",
    response_model=UserRead,
    responses=responses(422, 503),
)
async def get_user(owner: Owner, db: DatabaseDep) -> Response:
    return _read(await repository.get_user(db, user_id=owner.user_id, email=owner.email))


@router.patch(
    "",
    summary="Change the user's time zone",
    response_model=UserRead,
    responses=responses(400, 413, 415, 422, 503),
)
async def update_user(owner: Owner, db: DatabaseDep, data: UserUpdate) -> Response:
    user = await repository.set_timezone(
        db, user_id=owner.user_id, timezone=data.timezone, email=owner.email
    )
    return _read(user)


@router.get(
    "/limits",
    summary="The user's quotas and their current use",
    response_model=Limits,
    responses=responses(422, 503),
)
async def get_limits(owner: Owner, db: DatabaseDep, settings: SettingsDep) -> Response:
    use = await repository.use(db, user_id=owner.user_id)
    return json_response(
        Limits(
            tasks=Limit(limit=settings.quota_tasks_per_user, used=use.tasks),
            lists=Limit(limit=settings.quota_lists_per_user, used=use.lists),
            labels=Limit(limit=settings.quota_labels_per_user, used=use.labels),
            labels_per_task=Limit(limit=settings.quota_labels_per_task, used=None),
        )
    )


require_owner_on_every_route(router)
