"""The OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions and /v1/completions.

A Router of its own, so that its errors take OpenAI's shape (see openai_errors.py).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from locallab_gguf.api.common.services import Services
from locallab_gguf.api.common.sse import (
    EventStream,
    chunked_stream,
    collect_deltas,
    collect_events,
    unless_client_leaves,
)
from locallab_gguf.api.openai.errors import OPENAI_EXCEPTION_HANDLERS
from locallab_gguf.api.openai.requests import (
    chat_generation,
    completion_generation,
    include_usage,
    served_model,
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
    ModelList,
    OpenAIModel,
)

OWNER = "locallab-gguf"


def _listed(services: Services) -> list[OpenAIModel]:
    current = services.manager.current
    if current is None:
        return []
    # OpenAI's `created` dates the model; this server knows no date for it but its own start.
    created = int(services.started_at)
    return [OpenAIModel(id=current.spec.id, created=created, owned_by=OWNER)]


@get("/models", summary="The model this server serves, in OpenAI's shape")
async def list_models(services: NamedDependency[Services]) -> ModelList:
    return ModelList(data=_listed(services))


@get("/models/{model_id:path}", summary="One served model, in OpenAI's shape")
async def retrieve_model(
    model_id: FromPath[str], services: NamedDependency[Services]
) -> OpenAIModel:
    model_id = model_id.lstrip("/")  # a path parameter keeps its leading slash
    served = served_model(services.manager, model_id)
    return OpenAIModel(id=served.spec.id, created=int(services.started_at), owned_by=OWNER)


@post("/chat/completions", status_code=200, summary="OpenAI chat completion")
async def chat_completions(
    data: JSONBody[ChatCompletionRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> ChatCompletion | EventStream:
    model = served_model(services.manager, data.model)
    generation = chat_generation(data, services.new_tokens_default(model))
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
    model = served_model(services.manager, data.model)
    generation = completion_generation(data, services.new_tokens_default(model))
    stream = await services.generate(request, model, generation, user=data.user)
    reply = Reply("cmpl", model.spec.id, logprobs=generation.logprobs is not None)
    if data.stream:
        chunks = CompletionChunks(reply, include_usage=include_usage(data))
        return EventStream(chunked_stream(stream, chunks, stream_failure))
    deltas, finished = await unless_client_leaves(request.receive, collect_deltas(stream))
    return completion(reply, deltas, finished)


openai_router = Router(
    path="/v1",
    route_handlers=[list_models, retrieve_model, chat_completions, completions],
    exception_handlers=OPENAI_EXCEPTION_HANDLERS,
)
