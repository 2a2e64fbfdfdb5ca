"""Runs the batching engine on a thread of this process (--engine-isolation thread)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import Callable
from pathlib import Path

from locallab_gguf.engine.client import (
    SERVER_STOPPING,
    EngineState,
    RequestStream,
    StreamRouter,
    submit_on_a_thread,
)
from locallab_gguf.engine.encode.embedding_runner import LocalEmbeddingEngine
from locallab_gguf.engine.runtime.scheduler import BatchEngine, open_batch_engine
from locallab_gguf.engine.runtime.tokenizer import InProcessTokenizer
from locallab_gguf.engine.types import (
    EmbeddingRequest,
    Embeddings,
    EngineConfig,
    EngineStats,
    EventBatch,
    GenerationRequest,
    Rankings,
    RerankRequest,
)
from locallab_gguf.errors import WrongModelKind

NOT_AN_ENCODER = (
    "this model is a chat model: it generates text and embeds, but does not rerank; name a "
    'model of kind "reranker"'
)


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
        self._ids = itertools.count(1)
        self.engine = make_engine(self._deliver)
        self.info = self.engine.info
        self._tokenizer = InProcessTokenizer(self.engine.model)
        self._encoder: LocalEmbeddingEngine | None = None

    async def generate(self, request: GenerationRequest) -> RequestStream:
        job_id = next(self._ids)
        queue = self._streams.open(job_id)
        try:
            accepted = await submit_on_a_thread(
                functools.partial(self.engine.submit, job_id, request),
                functools.partial(self.engine.cancel, job_id),
            )
        except BaseException:
            self._streams.close(job_id)
            raise
        return RequestStream(accepted.prompt_tokens, queue, lambda: self._cancel(job_id))

    async def count_tokens(self, request: GenerationRequest) -> int:
        return await asyncio.to_thread(self.engine.count_prompt_tokens, request)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    # -- the model's tokenizer ------------------------------------------------------------

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return await self._tokenizer.tokenize(
            text, add_special=add_special, parse_special=parse_special
        )

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        return await self._tokenizer.token_pieces(tokens)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        # A chat model embeds through an encoder of its own, opened on first use.
        if self._encoder is None:
            encoder = await asyncio.to_thread(self.engine.encoder.engine)
            self._encoder = LocalEmbeddingEngine(self._loop, encoder)
        return await self._encoder.embed(request)

    async def rerank(self, request: RerankRequest) -> Rankings:
        raise WrongModelKind(NOT_AN_ENCODER)

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


async def open_local_engine(path: Path, config: EngineConfig, n_gpu_layers: int) -> LocalEngine:
    """Load the model and start its engine thread, without blocking the event loop."""
    loop = asyncio.get_running_loop()

    def load() -> LocalEngine:
        return LocalEngine(
            loop, lambda deliver: open_batch_engine(path, n_gpu_layers, config, deliver)
        )

    return await asyncio.to_thread(load)
