"""POST /generate, /generate/batch and /chat."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from locallab_gguf.api.common.fields import UsageBody
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.common.streaming.sse import (
    EventSource,
    EventStream,
    chunked_stream,
    collect,
    encode_text_event,
    event_stream,
    json_event,
    unless_client_leaves,
)
from locallab_gguf.api.locallab.wire import (
    AssistantMessage,
    BatchGenerateRequest,
    BatchGenerateResponse,
    ChatChoice,
    ChatChunk,
    ChatDelta,
    ChatRequest,
    ChatResponse,
    ChatStreamChoice,
    GenerateRequest,
    GenerateResponse,
    SamplingFields,
)
from locallab_gguf.engine.types import ChatMessage, Event, Finished, GenerationRequest, TextDelta
from locallab_gguf.serving.resident import ResidentModel


def _engine_request(
    services: NamedDependency[Services],
    model: ResidentModel,
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
        speculative=fields.speculative,
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
    async with services.model_for(data.model_id, data.keep_alive) as model:
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
    streams: list[EventSource] = []
    async with services.model_for(data.model_id, data.keep_alive) as model:
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
    messages = tuple(message.to_engine() for message in data.messages)
    async with services.model_for(data.model_id, data.keep_alive) as model:
        stream = await services.generate(
            request, model, _engine_request(services, model, data, messages=messages)
        )
        chunks = ChatStreamChunks(model.spec.id)
        if data.stream:
            return EventStream(chunked_stream(stream, chunks))
        text, finished = await unless_client_leaves(request.receive, collect(stream))
    return ChatResponse(
        id=chunks.id,
        created=chunks.created,
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


class ChatStreamChunks:
    """LocalLab's /chat stream: the role first, then content deltas, then finish_reason with
    the usage on the same chunk (OpenAI's stream puts usage on an extra chunk, if asked)."""

    def __init__(self, model_id: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_id = model_id

    def opening(self) -> bytes:
        return self._chunk(ChatDelta(role="assistant"))

    def encode(self, event: Event) -> bytes | None:
        if isinstance(event, TextDelta):
            return self._chunk(ChatDelta(content=event.text)) if event.text else None
        if isinstance(event, Finished):
            return self._chunk(ChatDelta(), event)
        return None

    def _chunk(self, delta: ChatDelta, finished: Finished | None = None) -> bytes:
        body = ChatChunk(
            id=self.id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.model_id,
            choices=[
                ChatStreamChoice(
                    index=0,
                    delta=delta,
                    finish_reason=finished.finish_reason if finished else None,
                )
            ],
            usage=UsageBody.of(finished.usage) if finished else None,
        )
        return json_event(body)
