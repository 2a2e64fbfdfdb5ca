"""What the embedding and rerank routes of every API surface share: the check that a model is
for the request, the one way they reach its engine (counted in /metrics), and vectors as
floats or base64."""

from __future__ import annotations

import base64
from contextlib import AbstractAsyncContextManager

import numpy as np
from litestar.types import Receive

from locallab_gguf.api.common.model_kinds import require_kind
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.common.streaming.sse import unless_client_leaves
from locallab_gguf.engine.types import (
    EmbeddingRequest,
    Embeddings,
    ModelKind,
    Rankings,
    RerankRequest,
)
from locallab_gguf.errors import InvalidRequest, UnsupportedParameter
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.serving.resident import ResidentModel


def encoder_for(
    services: Services, model_id: str | None, wanted: ModelKind, keep_alive: str | float | None
) -> AbstractAsyncContextManager[ResidentModel]:
    """The model a request names, held while the block runs; a named model of another kind is
    refused before it is loaded (the default model is checked once it is known)."""
    if model_id is not None:
        require_kind(services.manager.spec_for(model_id), wanted)
    return services.model_for(model_id, keep_alive)


async def embed(
    services: Services, model: ResidentModel, request: EmbeddingRequest, receive: Receive
) -> Embeddings:
    """The vectors of `request`; if the client hangs up first, its inputs not yet encoded are
    dropped (a long list would otherwise hold the model for nobody)."""
    require_kind(model.spec, "embedding")
    if request.dimensions is not None:
        _check_dimensions(model.spec, request.dimensions)
    result = await unless_client_leaves(receive, model.engine.embed(request))
    services.metrics.encoding.record(
        model.spec.id, "embedding", len(request.inputs), result.prompt_tokens
    )
    return result


async def rerank(
    services: Services, model: ResidentModel, request: RerankRequest, receive: Receive
) -> Rankings:
    """The scores of `request`'s documents; dropped like `embed` if the client hangs up."""
    require_kind(model.spec, "reranker")
    result = await unless_client_leaves(receive, model.engine.rerank(request))
    services.metrics.encoding.record(
        model.spec.id, "reranker", len(request.documents), result.prompt_tokens
    )
    return result


def _check_dimensions(spec: ModelSpec, dimensions: int) -> None:
    if spec.min_dimensions is None:
        raise UnsupportedParameter(
            "dimensions",
            f"model {spec.id!r} does not declare shortened vectors (models.toml "
            "`min_dimensions`); leave `dimensions` out",
        )
    if dimensions < spec.min_dimensions:
        raise InvalidRequest(
            f"dimensions is {dimensions}; model {spec.id!r} keeps its meaning down to "
            f"{spec.min_dimensions}"
        )


def vector_rows(result: Embeddings) -> np.ndarray:
    return np.frombuffer(result.vectors, dtype="<f4").reshape(result.count, result.dimensions)


def float_vectors(result: Embeddings) -> list[list[float]]:
    rows: list[list[float]] = vector_rows(result).tolist()
    return rows


def base64_vectors(result: Embeddings) -> list[str]:
    """Each vector as OpenAI's base64: its little-endian float32s, encoded."""
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in vector_rows(result)]
