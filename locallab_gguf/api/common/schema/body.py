"""JSON request bodies checked as their schema states them: bounded in depth, and typed strictly.

Depth: Python's decoders recurse once per level, so a body of `[[[[…` 100,000 deep would stop
the decoder at the interpreter's recursion limit; one a few hundred deep decodes, then exhausts
whatever walks it next (a JSON schema compiler, the worker pipe's encoder). No request this
server serves needs more than MAX_BODY_DEPTH levels.

Types: Litestar converts a decoded body into its Struct leniently (`"stream": 0` would be
false, `"max_tokens": "5"` five), which the OpenAPI document does not allow. Each body is first
checked strictly against the handler's type, the way JSON Schema reads it: a number with no
fraction is an integer (`2.0` is `2`), nothing else changes type. A mismatch is a 400 naming
the field, as Litestar's own validation errors are.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException

from locallab_gguf.errors import InvalidRequest

MAX_BODY_DEPTH = 128
# msgspec: "Expected `int` <= 5 - at `$.a[0]`", or "… - at `key` in `$.a`" for a mapping's key.
_AT_PATH = re.compile(r"^(?P<message>.*) - at (?:`key` in )?`\$\.?(?P<path>.*)`$", re.DOTALL)


class BoundedRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            value = await super().json()
        except RecursionError:
            raise _too_deep() from None
        body = await self.body()
        # Only a body with that many brackets can be that deep; most are skipped at C speed.
        if body.count(b"[") + body.count(b"{") > MAX_BODY_DEPTH and _deeper_than(
            value, MAX_BODY_DEPTH
        ):
            raise _too_deep()
        data = self.route_handler.parsed_fn_signature.parameters.get("data")
        if data is not None:
            _check_strictly(value, data.annotation)
        return value


def _check_strictly(value: Any, body_type: Any) -> None:
    try:
        msgspec.convert(value, body_type, strict=True, str_keys=True)
    except msgspec.ValidationError:
        try:
            msgspec.convert(_whole_numbers_as_ints(value), body_type, strict=True, str_keys=True)
        except msgspec.ValidationError as exc:
            raise _validation_error(str(exc)) from None


def _whole_numbers_as_ints(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, list):
        return [_whole_numbers_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole_numbers_as_ints(item) for key, item in value.items()}
    return value


def _validation_error(message: str) -> ValidationException:
    """As Litestar reports its own: the field's path (None for the whole body) and what is
    wrong with it, which the error handlers of each surface turn into their body."""
    found = _AT_PATH.match(message)
    key, what = (found["path"] or None, found["message"]) if found else (None, message)
    return ValidationException(
        detail="the request body does not match its schema",
        extra=[{"key": key, "message": what, "source": "body"}],
    )


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"the request body nests arrays and objects more than {MAX_BODY_DEPTH} levels deep; "
        "flatten it"
    )


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
