"""What can go wrong with a label request."""

from __future__ import annotations

import uuid

from todo_api.platform.http.problems import Conflict, NotFound


class LabelNotFound(NotFound):
    def __init__(self, label_id: uuid.UUID | str) -> None:
        # The same whether it never existed or is another user's.
        super().__init__(f"No label {label_id} for this user")


class LabelNameTaken(Conflict):
    """Another of the user's labels has this name, ignoring case and compatibility forms."""

    def __init__(self, name: str) -> None:
        super().__init__(f'A label named "{name}" already exists')
        self.name = name
