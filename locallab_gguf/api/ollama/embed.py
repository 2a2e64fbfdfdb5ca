"""Ollama's POST /api/embed and its older POST /api/embeddings, over models of kind
"embedding". As Ollama answers them: /api/embed scales vectors to length 1 and cuts long
inputs unless told `truncate: false`; /api/embeddings returns one vector as the model pools
it, and an empty prompt gets an empty vector."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from msgspec import Meta

from locallab_gguf.api.common.encoding import embed, encoder_for, float_vectors
from locallab_gguf.api.common.fields import INT32_MAX, KeepAlive, OllamaModelName
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.ollama.requests import model_id_of, ollama_name
from locallab_gguf.engine.types import EmbeddingRequest


class EmbedRequest(msgspec.Struct, kw_only=True):
    model: OllamaModelName
    input: str | Annotated[list[str], Meta(max_length=2048)]
    truncate: bool = True
    dimensions: Annotated[int, Meta(ge=1, le=INT32_MAX)] | None = None
    options: dict[str, Any] | None = None  # no option changes how a vector is computed
    keep_alive: KeepAlive = None


class EmbedResponse(msgspec.Struct, kw_only=True):
    model: str
    embeddings: list[list[float]]
    total_duration: int  # nanoseconds, as Ollama counts
    load_duration: int
    prompt_eval_count: int


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    model: OllamaModelName
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class EmbeddingsResponse(msgspec.Struct, kw_only=True):
    embedding: list[float]


@post("/embed", status_code=200, summary="Ollama: one vector per input, of length 1")
async def embed_inputs(
    data: JSONBody[EmbedRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> EmbedResponse:
    started, wall_started = time.monotonic_ns(), time.time_ns()
    inputs = (data.input,) if isinstance(data.input, str) else tuple(data.input)
    job = EmbeddingRequest(inputs=inputs, truncate=data.truncate, dimensions=data.dimensions)
    model_id = model_id_of(data.model)
    async with encoder_for(services, model_id, "embedding", data.keep_alive) as model:
        # The load's time counts when this request waited for it, as in Ollama.
        waited = model.loaded_at * 1e9 >= wall_started
        load_ns = int(model.load_seconds * 1e9) if waited else 0
        if inputs:
            result = await embed(services, model, job, request.receive)
            vectors, tokens = float_vectors(result), result.prompt_tokens
        else:
            vectors, tokens = [], 0
    return EmbedResponse(
        model=ollama_name(model.spec.id),
        embeddings=vectors,
        total_duration=time.monotonic_ns() - started,
        load_duration=load_ns,
        prompt_eval_count=tokens,
    )


@post("/embeddings", status_code=200, summary="Ollama (older API): the vector of one prompt")
async def embed_prompt(
    data: JSONBody[EmbeddingsRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> EmbeddingsResponse:
    model_id = model_id_of(data.model)
    async with encoder_for(services, model_id, "embedding", data.keep_alive) as model:
        if not data.prompt:
            return EmbeddingsResponse(embedding=[])
        job = EmbeddingRequest(inputs=(data.prompt,), normalize=False, truncate=True)
        result = await embed(services, model, job, request.receive)
    return EmbeddingsResponse(embedding=float_vectors(result)[0])
