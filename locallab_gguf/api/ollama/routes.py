"""Ollama's API under /api: generate and chat here; the model routes in `models`, the NDJSON
answers in `responses`, embeddings in `embed`.

Streams are NDJSON (one JSON object per line), the last one `done: true` with Ollama's counts
and durations in nanoseconds; `stream: false` answers that last object with the whole text.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from locallab_gguf.api.common.schema.answers import error_body, stream_media_type
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.common.streaming.sse import (
    EventStream,
    chunked_stream,
    collect_events,
    unless_client_leaves,
)
from locallab_gguf.api.ollama.embed import embed_inputs, embed_prompt
from locallab_gguf.api.ollama.errors import OLLAMA_EXCEPTION_HANDLERS
from locallab_gguf.api.ollama.models import ps, pull, remove, show, tags, version
from locallab_gguf.api.ollama.requests import (
    generation_of,
    is_load_only,
    model_id_of,
    refuse_unsupported,
)
from locallab_gguf.api.ollama.responses import NDJSON, Clock, Lines, failure_line
from locallab_gguf.api.ollama.wire import (
    ChatRequest,
    ErrorBody,
    GenerateRequest,
)


async def _answer(
    data: GenerateRequest | ChatRequest,
    services: Services,
    request: Request[Any, Any, Any],
) -> Response[Any] | EventStream:
    clock = Clock()
    refuse_unsupported(data)
    chat = isinstance(data, ChatRequest)
    async with services.model_for(model_id_of(data.model), data.keep_alive) as model:
        if model.loaded_at * 1e9 >= clock.wall_started:
            clock.load_ns = int(model.load_seconds * 1e9)  # this request waited for the load
        if is_load_only(data):
            # What the model will do: a user key's keep_alive leaves a pinned model as it is.
            unloading = model.keep_alive == 0
            done = Lines(data.model, clock, chat=chat)
            return Response(done.body("", done_reason="unload" if unloading else "load"))
        info = model.engine.info
        generation = generation_of(
            data,
            has_chat_template=info.chat_template_source is not None,
            context_length=info.context_length,
        )
        stream = await services.generate(request, model, generation)
        # Each line names the model as the request did (`name:latest`, an alias), as Ollama does.
        lines = Lines(data.model, clock, chat=chat)
        if data.stream:
            body = chunked_stream(stream, lines, failure_line, done=b"")
            return EventStream(body, media_type=NDJSON)
        events, finished = await unless_client_leaves(
            request.receive, collect_events(stream, clock.mark_first)
        )
    return Response(lines.whole(events, finished))


@post("/generate", status_code=200, summary="Ollama: complete a prompt (NDJSON by default)")
async def generate(
    data: JSONBody[GenerateRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> Response[Any] | EventStream:
    return await _answer(data, services, request)


@post("/chat", status_code=200, summary="Ollama: answer a conversation (NDJSON by default)")
async def chat(
    data: JSONBody[ChatRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> Response[Any] | EventStream:
    return await _answer(data, services, request)


ollama_router = Router(
    path="/api",
    route_handlers=[
        generate,
        chat,
        tags,
        show,
        ps,
        pull,
        remove,
        version,
        embed_inputs,
        embed_prompt,
    ],
    exception_handlers=OLLAMA_EXCEPTION_HANDLERS,
    opt={**error_body(ErrorBody), **stream_media_type(NDJSON)},
)
