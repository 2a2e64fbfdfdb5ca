"""Constraints a wire type states in its JSON Schema while its handler enforces them.

A field a handler refuses by name (with a message that says what to send instead) is decoded
leniently, so that the handler's message reaches the client; the schema still says what is
accepted, so the OpenAPI document allows exactly the bodies that are served. Rules between
fields, which no field's type can state, are JSON Schema fragments that a body lists in its
`json_schema_rules` (api/common/schema/openapi.py adds them to the body's schema as `allOf`).

What no JSON Schema can state (an id that must name something earlier in the same body, names
that must differ) is said in the field's description and stays a 400 from the handler.
"""

from __future__ import annotations

from typing import Any

from msgspec import Meta

NULL = {"type": "null"}


def only(*values: Any) -> Meta:
    """A field accepted only as null or one of `values` (a value that asks for nothing:
    n = 1, store = false, ...)."""
    return Meta(extra_json_schema={"enum": [None, *values]})


def empty() -> Meta:
    """A field accepted only as null or empty (a string, list or object that asks for
    nothing): what a handler refuses when set, e.g. images on a server without vision."""
    return Meta(extra_json_schema={"maxLength": 0, "maxItems": 0, "maxProperties": 0})


def never(*values: Any) -> Meta:
    """A field that may be anything its type allows but `values`."""
    return Meta(extra_json_schema={"not": {"enum": list(values)}})


def absent_or_null(field: str) -> dict[str, Any]:
    """A schema that holds when `field` is left out or null."""
    return {"properties": {field: NULL}}


def only_with(field: str, needs: str, value: Any) -> dict[str, Any]:
    """A rule: `field` may be set only when `needs` is `value`."""
    return {"anyOf": [absent_or_null(field), is_set(needs, {"const": value})]}


def is_set(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A schema that holds when `field` is given and matches `schema`."""
    return {"properties": {field: schema}, "required": [field]}


def non_empty_list(field: str) -> dict[str, Any]:
    """A schema that holds when `field` is a list of at least one item."""
    return is_set(field, {"type": "array", "minItems": 1})


def when(condition: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """A rule: a body that matches `condition` must match `then`."""
    return {"if": condition, "then": then}


def one_of_named(*fields: str) -> dict[str, Any]:
    """A rule: at least one of `fields` is a non-empty string."""
    return {
        "anyOf": [
            {"properties": {field: {"type": "string", "minLength": 1}}, "required": [field]}
            for field in fields
        ]
    }
