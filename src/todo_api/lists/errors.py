"""What can go wrong with a list request."""

from __future__ import annotations

import uuid

from todo_api.platform.http.problems import (
    Conflict,
    FieldError,
    NotFound,
    UnprocessableContent,
)


class ListNotFound(NotFound):
    def __init__(self, list_id: uuid.UUID | str) -> None:
        # The same whether it never existed or is another user's.
        super().__init__(f"No list {list_id} for this user")


class InboxNotDeletable(Conflict):
    def __init__(self) -> None:
        super().__init__("The inbox cannot be deleted (it can be renamed)")


class BadAnchor(UnprocessableContent):
    def __init__(self, field: str, anchor: object, where: str) -> None:
        message = f"{anchor} is not {where}"
        super().__init__(
            f"{field} {message}",
            errors=[
                FieldError(location="body", field=field, message=message, type="anchor_not_found")
            ],
        )


class BothAnchors(UnprocessableContent):
    def __init__(self) -> None:
        message = "give after_id or before_id, not both"
        super().__init__(
            message,
            errors=[
                FieldError(location="body", field="before_id", message=message, type="both_anchors")
            ],
        )
