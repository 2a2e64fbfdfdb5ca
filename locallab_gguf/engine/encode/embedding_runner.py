"""Runs the encoding engine on a thread of this process (--engine-isolation thread)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from pathlib import Path

from locallab_gguf.engine.client import EngineState, RequestStream, submit_on_a_thread
from locallab_gguf.engine.encode.calls import EncodeCalls
from locallab_gguf.engine.encode.embedding import EmbeddingEngine, open_embedding_engine
from locallab_gguf.engine.runtime.tokenizer import InProcessTokenizer
from locallab_gguf.engine.types import (
    EmbeddingMode,
    EncodeRequest,
    EncodeResult,
    EngineConfig,
    EngineStats,
    GenerationRequest,
)
from locallab_gguf.errors import LocalLabError


class LocalEmbeddingEngine(EncodeCalls):
    """An EngineClient over an EmbeddingEngine in this process; it does not generate."""

    state: EngineState = "ready"
    failure: str | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: EmbeddingEngine) -> None:
        self._loop = loop
        self.engine = engine
        self.info = engine.info
        self._tokenizer = InProcessTokenizer(engine.model)
        self._job_ids = itertools.count(1)

    async def generate(self, request: GenerationRequest) -> RequestStream:
        self.engine.submit(0, request)  # raises WrongModelKind
        raise AssertionError("unreachable")

    async def count_tokens(self, request: GenerationRequest) -> int:
        return self.engine.count_prompt_tokens(request)

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return await self._tokenizer.tokenize(
            text, add_special=add_special, parse_special=parse_special
        )

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        return await self._tokenizer.token_pieces(tokens)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def close(self, drain: bool) -> None:
        await asyncio.to_thread(self.engine.close, drain)

    async def _encode(self, request: EncodeRequest) -> EncodeResult:
        answer: asyncio.Future[EncodeResult] = self._loop.create_future()

        def settle(outcome: EncodeResult | LocalLabError) -> None:
            if answer.done():
                return
            if isinstance(outcome, LocalLabError):
                answer.set_exception(outcome)
            else:
                answer.set_result(outcome)

        def deliver(outcome: EncodeResult | LocalLabError) -> None:
            # Runs on the engine thread; a closed loop means nobody is listening.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(settle, outcome)

        job_id = next(self._job_ids)
        cancel = functools.partial(self.engine.cancel, job_id)
        await submit_on_a_thread(
            functools.partial(self.engine.submit_encode, job_id, request, deliver), cancel
        )
        try:
            return await answer
        except asyncio.CancelledError:
            cancel()  # the client left: its inputs still queued are dropped
            raise


async def open_local_embedding_engine(
    path: Path, config: EngineConfig, mode: EmbeddingMode, n_gpu_layers: int
) -> LocalEmbeddingEngine:
    loop = asyncio.get_running_loop()
    engine = await asyncio.to_thread(open_embedding_engine, path, n_gpu_layers, config, mode)
    return LocalEmbeddingEngine(loop, engine)
