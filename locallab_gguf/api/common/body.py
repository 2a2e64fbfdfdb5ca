"""Request bodies bounded in depth: a body nested thousands deep is a 400, not a RecursionError.

Python's decoders recurse once per level, so a body of `[[[[…` 100,000 deep would stop the
decoder at the interpreter's recursion limit; one a few hundred deep decodes, then exhausts
whatever walks it next (a JSON schema compiler, the worker pipe's encoder). No request this
server serves needs more than MAX_BODY_DEPTH levels.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from locallab_gguf.errors import InvalidRequest

MAX_BODY_DEPTH = 128


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
        return value


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
