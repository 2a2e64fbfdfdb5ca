"""Anthropic's Messages API: POST /v1/messages (streaming or not) and /v1/messages/count_tokens.

A stream is Anthropic's exact sequence of named events: message_start, content_block_start,
ping, content_block_delta (text_delta) ..., content_block_stop, message_delta (stop_reason,
usage), message_stop; a failure mid-stream is an `error` event.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Request, Router, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from locallab_gguf.api.anthropic.errors import ANTHROPIC_EXCEPTION_HANDLERS
from locallab_gguf.api.anthropic.requests import count_request, generation_of, refuse_unsupported
from locallab_gguf.api.anthropic.wire import (
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    CountTokensRequest,
    CountTokensResponse,
    ErrorBody,
    ErrorDetail,
    Message,
    MessageDelta,
    MessageDeltaBody,
    MessagesRequest,
    MessageStart,
    MessageStop,
    OutputUsage,
    Ping,
    StopReason,
    TextDeltaBody,
    TextOut,
    Usage,
)
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.common.sse import (
    EventStream,
    chunked_stream,
    collect,
    unless_client_leaves,
)
from locallab_gguf.engine.types import Event, Failed, Finished, TextDelta


def _stop_reason(finished: Finished) -> StopReason:
    if finished.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


def _named_event(body: msgspec.Struct) -> bytes:
    """`event: <type>` and the body as data: Anthropic's SDKs dispatch on the event name."""
    name = body.__struct_config__.tag
    return b"event: " + str(name).encode() + b"\ndata: " + msgspec.json.encode(body) + b"\n\n"


class _MessageEvents:
    """One streamed message: a single text block, then how it stopped."""

    def __init__(self, message_id: str, model_id: str, input_tokens: int) -> None:
        self.message_id = message_id
        self.model_id = model_id
        self.input_tokens = input_tokens

    def opening(self) -> bytes:
        start = Message(
            id=self.message_id,
            content=[],
            model=self.model_id,
            stop_reason=None,
            stop_sequence=None,
            usage=Usage(input_tokens=self.input_tokens, output_tokens=0),
        )
        return (
            _named_event(MessageStart(start))
            + _named_event(ContentBlockStart(0, TextOut(text="")))
            + _named_event(Ping())
        )

    def encode(self, event: Event) -> bytes | None:
        if isinstance(event, TextDelta):
            if not event.text:
                return None
            return _named_event(ContentBlockDelta(0, TextDeltaBody(event.text)))
        if isinstance(event, Finished):
            stop = MessageDeltaBody(_stop_reason(event), event.stop_sequence)
            usage = OutputUsage(event.usage.completion_tokens)
            return (
                _named_event(ContentBlockStop(0))
                + _named_event(MessageDelta(stop, usage))
                + _named_event(MessageStop())
            )
        return None


def _stream_failure(event: Failed) -> bytes:
    return _named_event(ErrorBody(ErrorDetail(type="api_error", message=event.detail)))


@post("/", status_code=200, summary="Anthropic Messages: answer a conversation")
async def create_message(
    data: JSONBody[MessagesRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> Message | EventStream:
    refuse_unsupported(data)
    user = data.metadata.user_id if data.metadata else None
    message_id = f"msg_{uuid.uuid4().hex}"
    async with services.model_for(data.model) as model:
        stream = await services.generate(request, model, generation_of(data), user=user)
        if data.stream:
            events = _MessageEvents(message_id, model.spec.id, stream.prompt_tokens)
            return EventStream(chunked_stream(stream, events, _stream_failure, done=b""))
        text, finished = await unless_client_leaves(request.receive, collect(stream))
    return Message(
        id=message_id,
        content=[TextOut(text=text)] if text else [],
        model=model.spec.id,
        stop_reason=_stop_reason(finished),
        stop_sequence=finished.stop_sequence,
        usage=Usage(
            input_tokens=finished.usage.prompt_tokens,
            output_tokens=finished.usage.completion_tokens,
        ),
    )


@post("/count_tokens", status_code=200, summary="Anthropic Messages: count a request's tokens")
async def count_tokens(
    data: JSONBody[CountTokensRequest], services: NamedDependency[Services]
) -> CountTokensResponse:
    refuse_unsupported(data)
    async with services.model_for(data.model) as model:
        return CountTokensResponse(await model.engine.count_tokens(count_request(data)))


anthropic_router = Router(
    path="/v1/messages",
    route_handlers=[create_message, count_tokens],
    exception_handlers=ANTHROPIC_EXCEPTION_HANDLERS,
)
