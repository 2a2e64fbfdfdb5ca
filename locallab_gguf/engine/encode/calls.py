"""`embed` and `rerank` over one `_encode` that answers either: what every runner of an
encoding engine (in a thread, in a worker process) has in common."""

from __future__ import annotations

from locallab_gguf.engine.types import (
    EmbeddingRequest,
    Embeddings,
    EncodeRequest,
    EncodeResult,
    Rankings,
    RerankRequest,
)


class EncodeCalls:
    async def _encode(self, request: EncodeRequest) -> EncodeResult:
        raise NotImplementedError

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        result = await self._encode(request)
        assert isinstance(result, Embeddings)
        return result

    async def rerank(self, request: RerankRequest) -> Rankings:
        result = await self._encode(request)
        assert isinstance(result, Rankings)
        return result
