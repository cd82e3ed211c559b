"""Request dependencies: settings, a database session, the owner named in the path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from todo_api.models import USER_ID_PATTERN
from todo_api.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    # Reads need no commit; writes commit inside the data-access function, before the
    # response. Leaving the block rolls back whatever was not committed.
    async with request.app.state.sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
Owner = Annotated[
    str,
    Path(
        pattern=USER_ID_PATTERN,
        min_length=1,
        max_length=128,
        description="The owner's id from the identity provider: 1-128 characters, "
        "no whitespace or control characters.",
        examples=["user_2f9a"],
    ),
]
