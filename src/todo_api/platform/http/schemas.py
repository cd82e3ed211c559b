"""Building blocks for request models: strict inputs, and partial updates derived from a
model's fields instead of declared a second time."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, Field, ValidationInfo, create_model, field_validator
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


def request_schema(*examples: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """`json_schema_extra` for a request body: its examples, and no `default` on its fields.

    A default in a request schema tells generators (openapi-typescript 7 by default) that the
    field is always there, which makes it required in the request type; the server fills it
    in when omitted, so clients need not send it.
    """

    def extra(schema: dict[str, Any]) -> None:
        for field in schema.get("properties", {}).values():
            field.pop("default", None)
        schema["examples"] = list(examples)

    return extra


def one_anchor(
    extra: Callable[[dict[str, Any]], None],
) -> Callable[[dict[str, Any]], None]:
    """A move body's schema: `after_id` or `before_id`, not both (so generated clients and
    fuzzers know the rule the server checks)."""

    def with_rule(schema: dict[str, Any]) -> None:
        extra(schema)
        schema["not"] = {"required": ["after_id", "before_id"]}

    return with_rule


def partial_model(
    fields: type[SQLModel], *, name: str, doc: str, examples: list[dict[str, Any]]
) -> Any:
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
    fields_of_model: dict[str, Any] = {
        # A field that refuses null keeps its type in the schema (generated clients must not
        # offer null); it is only optional, with no default to show.
        # The field's own schema additions (a pattern, say) come along.
        field: (
            hint if field in required else hint | None,
            Field(default=None, json_schema_extra=fields.model_fields[field].json_schema_extra),
        )
        for field, hint in declared.items()
    }
    model = create_model(
        name,
        __base__=PartialInput,
        __doc__=doc,
        __validators__=validators,
        **fields_of_model,
    )
    model.model_config["json_schema_extra"] = request_schema(*examples)
    model.model_rebuild(force=True)
    return model
