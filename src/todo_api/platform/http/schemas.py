"""Building blocks for request models: strict inputs, and partial updates derived from a
model's fields instead of declared a second time."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import ConfigDict, ValidationInfo, create_model, field_validator
from sqlmodel import SQLModel


class InputModel(SQLModel):
    # Unknown and read-only fields are errors, not silently ignored typos.
    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]


class PartialInput(InputModel):
    """A partial update (PATCH): only the fields present change."""

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


def _admits_none(hint: Any) -> bool:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint is type(None) or type(None) in typing.get_args(hint)


def partial_model(fields: type[SQLModel], *, name: str, doc: str, **config: Any) -> Any:
    """`fields`' fields, each optional; `null` is accepted only where `fields` accepts it.

    Typed `Any` because the class is made at run time; modules declare the alias mypy sees.
    """
    hints = typing.get_type_hints(fields, include_extras=True)
    declared = {name: hints[name] for name in fields.model_fields}
    required = frozenset(field for field, hint in declared.items() if not _admits_none(hint))

    def not_null(cls: type, value: object, info: ValidationInfo) -> object:
        # May be omitted, but not cleared. (A field validator, so that the error names the
        # field.)
        if value is None and info.field_name in required:
            raise ValueError("cannot be null")
        return value

    validators = {}
    if required:
        validators["_not_null"] = field_validator(*sorted(required), mode="before")(not_null)
    model = create_model(
        name,
        __base__=PartialInput,
        __doc__=doc,
        __validators__=validators,
        **{field: (hint | None, None) for field, hint in declared.items()},  # type: ignore[call-overload]
    )
    model.model_config.update(config)  # type: ignore[typeddict-item]
    model.model_rebuild(force=True)
    return model
