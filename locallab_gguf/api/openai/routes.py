"""The OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions and /v1/completions.

A Router of its own, so that its errors take OpenAI's shape (see openai_errors.py).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from locallab_gguf.api.common.schema.answers import error_body
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.common.streaming.sse import (
    EventStream,
    chunked_stream,
    collect_deltas,
    collect_events,
    unless_client_leaves,
)
from locallab_gguf.api.openai.embeddings import create_embeddings
from locallab_gguf.api.openai.errors import OPENAI_EXCEPTION_HANDLERS
from locallab_gguf.api.openai.models import list_models, retrieve_model
from locallab_gguf.api.openai.requests import (
    chat_generation,
    completion_generation,
    include_usage,
)
from locallab_gguf.api.openai.responses import (
    ChatChunks,
    CompletionChunks,
    Reply,
    chat_completion,
    completion,
    stream_failure,
)
from locallab_gguf.api.openai.wire import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorBody,
)


@post("/chat/completions", status_code=200, summary="OpenAI chat completion")
async def chat_completions(
    data: JSONBody[ChatCompletionRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> ChatCompletion | EventStream:
    async with services.model_for(data.model, data.keep_alive) as model:
        generation = chat_generation(data, model.engine.info.context_length)
        stream = await services.generate(request, model, generation, user=data.user)
        reply = Reply("chatcmpl", model.spec.id, logprobs=generation.logprobs is not None)
        if data.stream:
            chunks = ChatChunks(reply, include_usage=include_usage(data))
            return EventStream(chunked_stream(stream, chunks, stream_failure))
        events, finished = await unless_client_leaves(request.receive, collect_events(stream))
    return chat_completion(reply, events, finished)


@post("/completions", status_code=200, summary="OpenAI text completion")
async def completions(
    data: JSONBody[CompletionRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> Completion | EventStream:
    async with services.model_for(data.model, data.keep_alive) as model:
        generation = completion_generation(data, model.engine.info.context_length)
        stream = await services.generate(request, model, generation, user=data.user)
        reply = Reply("cmpl", model.spec.id, logprobs=generation.logprobs is not None)
        if data.stream:
            chunks = CompletionChunks(reply, include_usage=include_usage(data))
            return EventStream(chunked_stream(stream, chunks, stream_failure))
        deltas, finished = await unless_client_leaves(request.receive, collect_deltas(stream))
    return completion(reply, deltas, finished)


openai_router = Router(
    path="/v1",
    route_handlers=[list_models, retrieve_model, chat_completions, completions, create_embeddings],
    exception_handlers=OPENAI_EXCEPTION_HANDLERS,
    opt=error_body(ErrorBody),
)
