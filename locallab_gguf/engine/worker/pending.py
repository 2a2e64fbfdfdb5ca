"""Calls to the worker process that wait for one reply each, correlated by a plain id.

Every kind of call goes through here: a generation's acceptance and a token count (answered by
SubmitReply), a tokenizer call (TokenizerReply), an encode (Encoded). Ids come from one counter,
so a reply finds its caller whatever its kind, and a generation's stream uses its call's id.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

from locallab_gguf.engine.worker.worker_protocol import Encoded, SubmitReply, TokenizerReply

Reply = SubmitReply | TokenizerReply | Encoded
R = TypeVar("R", SubmitReply, TokenizerReply, Encoded)


class PendingCalls:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    def open(self, reply: type[R]) -> tuple[int, asyncio.Future[R]]:
        """A new call's id, and the future its `reply` settles."""
        call_id = next(self._ids)
        future: asyncio.Future[R] = self._loop.create_future()
        self._waiting[call_id] = future
        return call_id, future

    def settle(self, call_id: int, reply: Reply) -> bool:
        """Hand the reply to its caller; returns whether one was still waiting."""
        future = self._take(call_id)
        if future is not None:
            future.set_result(reply)
        return future is not None

    def fail(self, call_id: int, error: Exception) -> bool:
        """End the call with `error`; returns whether its caller was still waiting."""
        future = self._take(call_id)
        if future is not None:
            future.set_exception(error)
        return future is not None

    def _take(self, call_id: int) -> asyncio.Future[Any] | None:
        """The call's future, if its caller still waits; the call is forgotten either way."""
        future = self._waiting.pop(call_id, None)
        return None if future is None or future.done() else future

    def forget(self, call_id: int) -> None:
        """The caller stopped waiting (it was cancelled, or it has its reply)."""
        self._waiting.pop(call_id, None)

    def fail_all(self, error: Callable[[], Exception], keep: Callable[[int], bool]) -> None:
        """The one failure path when the worker goes away: every waiting call but those `keep`
        names (generations to be resumed on the next worker) ends with a fresh `error()`."""
        for call_id in [call_id for call_id in self._waiting if not keep(call_id)]:
            self.fail(call_id, error())
