"""The asyncio side of the engine: submit a request, iterate its events, cancel it.

`EngineClient` is the seam the HTTP and serving layers talk to. Two runners implement it:
`thread_runner.LocalEngine` (the batching engine on a thread of this process) and
`process_runner.WorkerEngine` (the same engine in a supervised worker process). Events cross
from the engine in one batch per decode step, so the event loop wakes once per step, not once
per token per request. Nothing here imports llama_cpp.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Literal, Protocol, TypeVar

from locallab_gguf.engine.types import (
    EmbeddingRequest,
    Embeddings,
    EngineInfo,
    EngineStats,
    Event,
    EventBatch,
    Failed,
    Finished,
    GenerationRequest,
    Rankings,
    RerankRequest,
)

T = TypeVar("T")


async def submit_on_a_thread(submit: Callable[[], T], cancel: Callable[[], None]) -> T:
    """`submit()` on a thread: tokenizing a long prompt or many inputs would stall the event
    loop. A thread cannot be stopped, so if the caller is cancelled first, `cancel()` runs once
    `submit` has queued the request, and nothing is served for nobody."""
    submitting = asyncio.ensure_future(asyncio.to_thread(submit))
    try:
        return await asyncio.shield(submitting)
    except asyncio.CancelledError:

        def undo(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                cancel()

        submitting.add_done_callback(undo)
        raise


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

    async def count_tokens(self, request: GenerationRequest) -> int:
        """How many tokens the request's prompt is, rendered and tokenized as `generate`
        would; nothing is generated."""
        ...

    def stats(self) -> EngineStats: ...

    async def close(self, drain: bool) -> None: ...

    # -- the model's tokenizer (POST /tokenize, /detokenize) -----------------------------

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """The ids of `text` in the model's vocabulary; `add_special` adds its BOS (where it
        has one), `parse_special` reads control-token text (<|im_start|>) as that token."""
        ...

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        """The bytes each token stands for, control tokens as their text; InvalidRequest
        naming the first id outside the vocabulary."""
        ...

    # -- Embeddings and reranking (models of kind "embedding" and "reranker"; any other
    # -- model raises WrongModelKind, as generation from those models does)

    async def embed(self, request: EmbeddingRequest) -> Embeddings: ...

    async def rerank(self, request: RerankRequest) -> Rankings: ...


class StreamRouter:
    """Routes batches of (job id, event) to the queue of each request's stream, on the loop."""

    def __init__(self) -> None:
        self._queues: dict[int, asyncio.Queue[Event]] = {}

    def open(self, job_id: int) -> asyncio.Queue[Event]:
        """The queue of request `job_id`'s events (the caller chooses its ids)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queues[job_id] = queue
        return queue

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
