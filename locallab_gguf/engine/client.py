"""The asyncio side of the engine: submit a request, iterate its events, cancel it.

`EngineClient` is the seam the HTTP layer talks to; `LocalEngine` runs the batching engine
on a thread of this process. Events cross from the engine thread in one batch per decode
step, so the event loop wakes once per step, not once per token per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Literal, Protocol

from locallab_gguf.engine.scheduler import BatchEngine, EventBatch
from locallab_gguf.engine.types import (
    EngineInfo,
    EngineStats,
    Event,
    Failed,
    Finished,
    GenerationRequest,
)


class RequestStream:
    """The events of one request, ending with Finished or Failed."""

    def __init__(
        self, prompt_tokens: int, queue: asyncio.Queue[Event], cancel: Callable[[], None]
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self._queue = queue
        self._cancel = cancel
        self._done = False

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not self._done:
            event = await self._queue.get()
            if isinstance(event, Finished | Failed):
                self._done = True
            yield event

    def drain_ready(self) -> list[Event]:
        """Events already delivered, without waiting: lets a writer send them in one chunk."""
        ready: list[Event] = []
        while not self._done and not self._queue.empty():
            event = self._queue.get_nowait()
            if isinstance(event, Finished | Failed):
                self._done = True
            ready.append(event)
        return ready

    def cancel(self) -> None:
        """Stop generating (idempotent); the slot is free again at the engine's next step."""
        if not self._done:
            self._done = True
            self._cancel()

    def __del__(self) -> None:
        # A stream dropped unread (say, a response never started because its client left)
        # must not keep a slot generating for nobody.
        self.cancel()


EngineState = Literal["ready", "restarting", "failed"]
SERVER_STOPPING = "the server is stopping; the request did not finish"


class EngineClient(Protocol):
    info: EngineInfo

    @property
    def state(self) -> EngineState: ...

    @property
    def failure(self) -> str | None:
        """Why the engine is "failed" (or what it is recovering from while "restarting")."""
        ...

    async def generate(self, request: GenerationRequest) -> RequestStream: ...

    def stats(self) -> EngineStats: ...

    async def close(self, drain: bool) -> None: ...


class StreamRouter:
    """Routes batches of (job id, event) to the queue of each request's stream, on the loop."""

    def __init__(self) -> None:
        self._queues: dict[int, asyncio.Queue[Event]] = {}
        self._ids = itertools.count(1)

    def open(self) -> tuple[int, asyncio.Queue[Event]]:
        job_id = next(self._ids)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queues[job_id] = queue
        return job_id, queue

    def close(self, job_id: int) -> None:
        self._queues.pop(job_id, None)

    def dispatch(self, batch: EventBatch) -> None:
        queues = self._queues
        for job_id, event in batch:
            queue = queues.get(job_id)
            if queue is None:
                continue  # cancelled: nobody is listening
            queue.put_nowait(event)
            if isinstance(event, Finished | Failed):
                del queues[job_id]

    def fail_all(self, detail: str) -> int:
        """End every open stream with `detail`; returns how many there were."""
        queues, self._queues = self._queues, {}
        for queue in queues.values():
            queue.put_nowait(Failed(detail=detail))
        return len(queues)


class LocalEngine:
    """An EngineClient over a BatchEngine running on a thread of this process."""

    state: EngineState = "ready"
    failure: str | None = None

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        make_engine: Callable[[Callable[[EventBatch], None]], BatchEngine],
    ) -> None:
        self._loop = loop
        self._streams = StreamRouter()
        self.engine = make_engine(self._deliver)
        self.info = self.engine.info

    async def generate(self, request: GenerationRequest) -> RequestStream:
        job_id, queue = self._streams.open()
        try:
            # Tokenizing a long prompt takes a while; keep it off the event loop.
            accepted = await asyncio.to_thread(self.engine.submit, job_id, request)
        except BaseException:
            self._streams.close(job_id)
            raise
        return RequestStream(accepted.prompt_tokens, queue, lambda: self._cancel(job_id))

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def close(self, drain: bool) -> None:
        if not drain:
            self._streams.fail_all(SERVER_STOPPING)
        await asyncio.to_thread(self.engine.close, drain)

    def _cancel(self, job_id: int) -> None:
        self._streams.close(job_id)
        self.engine.cancel(job_id)

    def _deliver(self, batch: EventBatch) -> None:
        # Runs on the engine thread; everything else happens on the loop.
        if not batch:
            return
        # A closed loop means the process is exiting and nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._streams.dispatch, batch)
