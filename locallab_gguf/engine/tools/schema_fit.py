"""Tool schemas as clients write them, loosened to what the grammar converter can follow.

A client's tool schema is a description for the model first; a grammar that follows it a
little less strictly is better than refusing the whole request. `loosened` keeps what the
converter understands and widens the rest:

- a `maxLength`, `maxItems` (or their minimums) above the grammar's repetition limit: no bound;
- an `enum` longer than the grammar allows: its type alone;
- a `pattern` that is not anchored (`^...$`) or repeats beyond the limit: any string;
- a schema that constrains nothing (`{}`, `true`, only a `description`): any JSON value, where
  the converter would read an empty schema as "an object";
- a `$ref` outside the document: any JSON value;
- keywords the converter does not know (`title`, `examples`, `minimum`, ...): left out.

The limits that protect the engine (schema size, nesting) are checked before, by the caller.
"""

from __future__ import annotations

import re
from typing import Any

from locallab_gguf.engine.runtime.grammar import MAX_ENUM, MAX_REPEAT

JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
# Any JSON value, spelled so that the converter reads it so.
ANY_VALUE: dict[str, Any] = {"type": list(sorted(JSON_TYPES - {"integer"}))}

# The keywords json_schema_to_gbnf reads; the rest are dropped.
_SHAPE_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "additionalProperties",
        "items",
        "prefixItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "pattern",
        "format",
        "minLength",
        "maxLength",
    }
)
_KEPT_KEYWORDS = _SHAPE_KEYWORDS | {"required", "minItems", "maxItems", "$defs", "definitions"}
_REPEATS = ("minLength", "maxLength", "minItems", "maxItems")
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def loosened(schema: Any) -> dict[str, Any]:
    """A copy of `schema` that the grammar converter can follow (see the module's notes)."""
    if schema is True or not isinstance(schema, dict):
        return dict(ANY_VALUE)  # `false` (nothing allowed) is widened too: a model must answer
    node: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in _KEPT_KEYWORDS:
            continue
        if key in ("properties", "$defs", "definitions"):
            if isinstance(value, dict):
                node[key] = {name: loosened(sub) for name, sub in value.items() if sub is not False}
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            if isinstance(value, list) and value:
                node[key] = [loosened(sub) for sub in value]
        elif key == "items":
            node[key] = (
                [loosened(sub) for sub in value] if isinstance(value, list) else (loosened(value))
            )
        elif key == "additionalProperties":
            node[key] = value if value is False else loosened(value)
        elif key in _REPEATS:
            if isinstance(value, int) and 0 <= value <= MAX_REPEAT:
                node[key] = value
        elif key == "enum":
            if isinstance(value, list) and 0 < len(value) <= MAX_ENUM:
                node[key] = value
        elif key == "pattern":
            if _followable_pattern(value):
                node[key] = value
        elif key == "type":
            kept = _types(value)
            if kept:
                node[key] = kept
        elif key == "$ref":
            if isinstance(value, str) and value.startswith("#"):
                node[key] = value
        elif key == "required":
            if isinstance(value, list):
                node[key] = [name for name in value if isinstance(name, str)]
        else:
            node[key] = value
    if "minLength" in node and "maxLength" in node and node["minLength"] > node["maxLength"]:
        del node["minLength"]
    if not _SHAPE_KEYWORDS & node.keys() - {"format"}:
        return dict(ANY_VALUE)
    return node


def _types(value: Any) -> str | list[str] | None:
    if isinstance(value, str):
        return value if value in JSON_TYPES else None
    if isinstance(value, list):
        known = [name for name in value if name in JSON_TYPES]
        return known if known else None
    return None


def _followable_pattern(pattern: Any) -> bool:
    # The converter reads only anchored patterns, and spells each repetition out.
    if not isinstance(pattern, str) or not (pattern.startswith("^") and pattern.endswith("$")):
        return False
    for match in _QUANTIFIER.finditer(pattern):
        if max(int(number) for number in match.groups() if number) > MAX_REPEAT:
            return False
    return True
