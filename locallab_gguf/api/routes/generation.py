"""POST /generate, /generate/batch and /chat."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from locallab_gguf.api.services import Services
from locallab_gguf.api.streaming import (
    EventSource,
    EventStream,
    collect,
    encode_text_event,
    event_stream,
    json_event,
    unless_client_leaves,
)
from locallab_gguf.api.wire import (
    AssistantMessage,
    BatchGenerateRequest,
    BatchGenerateResponse,
    ChatChoice,
    ChatChunk,
    ChatChunkChoice,
    ChatDelta,
    ChatRequest,
    ChatResponse,
    GenerateRequest,
    GenerateResponse,
    SamplingFields,
    UsageBody,
)
from locallab_gguf.engine.types import (
    ChatMessage,
    Event,
    Finished,
    GenerationRequest,
    TextDelta,
)
from locallab_gguf.model_manager import ActiveModel


def _engine_request(
    services: NamedDependency[Services],
    model: ActiveModel,
    fields: SamplingFields,
    *,
    prompt: str | None = None,
    messages: tuple[ChatMessage, ...] | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        messages=messages,
        max_tokens=fields.new_tokens(services.new_tokens_default(model)),
        sampling=fields.sampling(),
        stop=fields.stop_strings(),
    )


def _prompt_of(prompt: str, system_prompt: str | None) -> dict[str, Any]:
    """A system prompt turns a raw completion into one chat turn under the model's template."""
    if system_prompt is None:
        return {"prompt": prompt}
    return {"messages": (ChatMessage("system", system_prompt), ChatMessage("user", prompt))}


@post("/generate", status_code=200, summary="Complete a prompt")
async def generate(
    data: JSONBody[GenerateRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> GenerateResponse | EventStream:
    model = services.manager.active(data.model_id)
    stream = await services.generate(
        request,
        model,
        _engine_request(services, model, data, **_prompt_of(data.prompt, data.system_prompt)),
    )
    if data.stream:
        return EventStream(event_stream(stream, encode_text_event))
    text, finished = await unless_client_leaves(request.receive, collect(stream))
    return GenerateResponse(
        response=text,
        text=text,
        model=model.spec.id,
        finish_reason=finished.finish_reason,
        usage=UsageBody.of(finished.usage),
    )


@post("/generate/batch", status_code=200, summary="Complete several prompts concurrently")
async def generate_batch(
    data: JSONBody[BatchGenerateRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> BatchGenerateResponse:
    model = services.manager.active(data.model_id)
    streams: list[EventSource] = []
    try:
        for prompt in data.prompts:
            fields = _prompt_of(prompt, data.system_prompt)
            streams.append(
                await services.generate(
                    request, model, _engine_request(services, model, data, **fields)
                )
            )
        results = await unless_client_leaves(
            request.receive, asyncio.gather(*(collect(stream) for stream in streams))
        )
    finally:
        for stream in streams:
            stream.cancel()
    prompt_tokens = sum(finished.usage.prompt_tokens for _, finished in results)
    completion_tokens = sum(finished.usage.completion_tokens for _, finished in results)
    return BatchGenerateResponse(
        responses=[text for text, _ in results],
        usage=UsageBody(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens),
    )


@post("/chat", status_code=200, summary="Answer a conversation")
async def chat(
    data: JSONBody[ChatRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> ChatResponse | EventStream:
    model = services.manager.active(data.model_id)
    stream = await services.generate(
        request, model, _engine_request(services, model, data, messages=tuple(data.messages))
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if data.stream:
        return EventStream(_chat_chunks(stream, completion_id, created, model.spec.id))
    text, finished = await unless_client_leaves(request.receive, collect(stream))
    return ChatResponse(
        id=completion_id,
        created=created,
        model=model.spec.id,
        choices=[
            ChatChoice(
                index=0,
                message=AssistantMessage(content=text),
                finish_reason=finished.finish_reason,
            )
        ],
        usage=UsageBody.of(finished.usage),
    )


async def _chat_chunks(
    stream: EventSource, completion_id: str, created: int, model_id: str
) -> AsyncIterator[bytes]:
    """The role first, then content deltas, then finish_reason with usage, then [DONE]."""

    def chunk(delta: ChatDelta, finished: Finished | None = None) -> bytes:
        body = ChatChunk(
            id=completion_id,
            object="chat.completion.chunk",
            created=created,
            model=model_id,
            choices=[
                ChatChunkChoice(
                    index=0,
                    delta=delta,
                    finish_reason=finished.finish_reason if finished else None,
                )
            ],
            usage=UsageBody.of(finished.usage) if finished else None,
        )
        return json_event(body)

    def encode(event: Event) -> bytes | None:
        if isinstance(event, TextDelta):
            return chunk(ChatDelta(content=event.text)) if event.text else None
        if isinstance(event, Finished):
            return chunk(ChatDelta(), event)
        return None

    try:
        yield chunk(ChatDelta(role="assistant"))
        async for data in event_stream(stream, encode):
            yield data
    finally:
        stream.cancel()
