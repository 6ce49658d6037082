"""The pieces the spec models (components.spec) are built from: a regex rule
that is both enforced and published in the JSON Schema, and the translation of
pydantic's errors into `SpecError`'s map of dotted field paths to messages.

A field's message is its JSON Schema `description` (what the OpenAPI document
tells clients), so the document and the errors cannot say different things.
No message ever carries the value sent: a rejected secret is never echoed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic_core import PydanticCustomError, core_schema

# The error type of a rule with a message of its own (rule()); its context may
# also move the error to other paths ("errors": {path: message}).
RULE = "spec_rule"


class SpecError(ValueError):
    """A spec was rejected. `errors` maps a dotted field path to a message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def rule(message: str, errors: dict[str, str] | None = None) -> PydanticCustomError:
    """An error raised by a validator: `message` at its own place, or the
    given paths (for rules across fields: a duplicate path, a shared name)."""
    return PydanticCustomError(RULE, message, {"errors": errors or {}})


@dataclass(frozen=True)
class Pattern:
    """`Annotated[str, Pattern(r"^...$")]`: the whole string must match. One
    regex, enforced with Python's `re.fullmatch` (a '$' there would let a
    trailing newline through) and published as the schema's `pattern`, where
    ECMA-262 semantics make '^...$' a whole-string match too."""

    regex: str

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        compiled = re.compile(self.regex)

        def check(value: str) -> str:
            if not compiled.fullmatch(value):
                raise PydanticCustomError("pattern_mismatch", "does not match the pattern")
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out = handler(schema)
        out["pattern"] = self.regex
        return out


def field_errors(exc: ValidationError, schema: dict[str, Any]) -> dict[str, str]:
    """pydantic's errors as {dotted path: message}, the first one per path;
    `schema` is the validated model's JSON Schema (its descriptions)."""
    out: dict[str, str] = {}
    for err in exc.errors(include_input=False, include_url=False):
        path, description = _locate(err["loc"], schema)
        if err["type"] == RULE:
            moved = (err.get("ctx") or {}).get("errors") or {}
            for where, message in (moved or {path: err["msg"]}).items():
                out.setdefault(where, message)
            continue
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        else:
            message = description or "not valid"
        out.setdefault(path or "body", message)
    return out


def _locate(loc: tuple[Any, ...], schema: dict[str, Any]) -> tuple[str, str | None]:
    """The dotted path of an error's `loc` ('files[0].content', 'env.NAME')
    and the description of the deepest schema node on the way there. An index
    into a list of plain values (command) names the list, as a field."""
    defs = schema.get("$defs", {})
    node: dict[str, Any] | None = _resolve(schema, defs)
    description = None
    path = ""
    for i, part in enumerate(loc):
        if part == "[key]":  # the key of a map entry: the entry is the field
            continue
        if isinstance(part, int):
            items = _resolve(node.get("items"), defs) if node else None
            if i == len(loc) - 1 and not (items and "properties" in items):
                break
            path += f"[{part}]"
            node = items
        else:
            path += f".{part}" if path else str(part)
            if node and part in node.get("properties", {}):
                node = _resolve(node["properties"][part], defs)
            elif node and isinstance(node.get("additionalProperties"), dict):
                node = _resolve(node["additionalProperties"], defs)
            else:
                node = None
        if node and node.get("description"):
            description = node["description"]
    return path, description


def _resolve(node: Any, defs: dict[str, Any]) -> dict[str, Any] | None:
    """A schema node with its $ref followed and a nullable anyOf unwrapped,
    described as the referring node describes it (a model's own description
    tells what it is for, not what is wrong)."""
    if not isinstance(node, dict):
        return None
    described = node.get("description")
    while "$ref" in node or "anyOf" in node:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        else:
            node = next(n for n in node["anyOf"] if n.get("type") != "null")
    return {**node, "description": described}
