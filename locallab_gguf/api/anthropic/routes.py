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
from locallab_gguf.api.anthropic.requests import count_request, generation_of, thinking_enabled
from locallab_gguf.api.anthropic.wire import (
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    ContentOut,
    CountTokensRequest,
    CountTokensResponse,
    ErrorBody,
    ErrorDetail,
    InputJsonDelta,
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
    ThinkingDeltaBody,
    ThinkingOut,
    ToolUseOut,
    Usage,
)
from locallab_gguf.api.common.keepalive import with_keepalive
from locallab_gguf.api.common.schema.answers import error_body
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.common.streaming.sse import (
    EventStream,
    chunked_stream,
    collect_events,
    unless_client_leaves,
)
from locallab_gguf.api.common.streaming.tool_calls import ToolCallCollector
from locallab_gguf.engine.types import (
    Event,
    Failed,
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallArguments,
    ToolCallStarted,
)


def _stop_reason(finished: Finished) -> StopReason:
    if finished.finish_reason == "tool_calls":
        return "tool_use"
    if finished.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


def _named_event(body: msgspec.Struct) -> bytes:
    """`event: <type>` and the body as data: Anthropic's SDKs dispatch on the event name."""
    name = body.__struct_config__.tag
    return b"event: " + str(name).encode() + b"\ndata: " + msgspec.json.encode(body) + b"\n\n"


def content_of(events: list[Event], *, thinking: bool) -> list[ContentOut]:
    """The blocks of a whole answer, in the order the model wrote them."""
    blocks: list[ContentOut] = []
    collector = ToolCallCollector()
    for event in events:
        if collector.feed(event):
            if isinstance(event, ToolCallStarted):
                blocks.append(ToolUseOut(id=event.id, name=event.name, input={}))
        elif isinstance(event, ReasoningDelta) and thinking:
            if blocks and isinstance(blocks[-1], ThinkingOut):
                blocks[-1] = ThinkingOut(thinking=blocks[-1].thinking + event.text)
            else:
                blocks.append(ThinkingOut(thinking=event.text))
        elif isinstance(event, TextDelta) and event.text:
            if blocks and isinstance(blocks[-1], TextOut):
                blocks[-1] = TextOut(text=blocks[-1].text + event.text)
            else:
                blocks.append(TextOut(text=event.text))
    by_id = {call.id: call for call in collector.take()}
    return [
        ToolUseOut(id=block.id, name=block.name, input=by_id[block.id].arguments_object())
        if isinstance(block, ToolUseOut)
        else block
        for block in blocks
    ]


class _MessageEvents:
    """One streamed message: its blocks (thinking, text, tool_use) each opened, filled with
    deltas and closed in turn, then how it stopped."""

    def __init__(
        self, message_id: str, model_id: str, input_tokens: int, *, thinking: bool
    ) -> None:
        self.message_id = message_id
        self.model_id = model_id
        self.input_tokens = input_tokens
        self.thinking = thinking
        self._index = -1
        self._open: str | None = None  # the kind of the block being written

    def opening(self) -> bytes:
        start = Message(
            id=self.message_id,
            content=[],
            model=self.model_id,
            stop_reason=None,
            stop_sequence=None,
            usage=Usage(input_tokens=self.input_tokens, output_tokens=0),
        )
        return _named_event(MessageStart(start)) + _named_event(Ping())

    def encode(self, event: Event) -> bytes | None:
        if isinstance(event, ReasoningDelta):
            if not self.thinking or not event.text:
                return None
            opened = self._ensure("thinking", ThinkingOut(thinking=""))
            delta = ThinkingDeltaBody(event.text)
            return opened + _named_event(ContentBlockDelta(self._index, delta))
        if isinstance(event, TextDelta):
            if not event.text:
                return None
            opened = self._ensure("text", TextOut(text=""))
            return opened + _named_event(ContentBlockDelta(self._index, TextDeltaBody(event.text)))
        if isinstance(event, ToolCallStarted):
            block = ToolUseOut(id=event.id, name=event.name, input={})
            return self._begin("tool_use", block)
        if isinstance(event, ToolCallArguments):
            return _named_event(ContentBlockDelta(self._index, InputJsonDelta(event.text)))
        if isinstance(event, Finished):
            stop = MessageDeltaBody(_stop_reason(event), event.stop_sequence)
            usage = OutputUsage(event.usage.completion_tokens)
            return (
                self._close()
                + _named_event(MessageDelta(stop, usage))
                + _named_event(MessageStop())
            )
        return None

    def _ensure(self, kind: str, empty: ContentOut) -> bytes:
        return b"" if self._open == kind else self._begin(kind, empty)

    def _begin(self, kind: str, empty: ContentOut) -> bytes:
        closed = self._close()
        self._index += 1
        self._open = kind
        return closed + _named_event(ContentBlockStart(self._index, empty))

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _named_event(ContentBlockStop(self._index))


def _stream_failure(event: Failed) -> bytes:
    return _named_event(ErrorBody(ErrorDetail(type="api_error", message=event.detail)))


@post("/", status_code=200, summary="Anthropic Messages: answer a conversation")
async def create_message(
    data: JSONBody[MessagesRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> Message | EventStream:
    user = data.metadata.user_id if data.metadata else None
    message_id = f"msg_{uuid.uuid4().hex}"
    thinking = thinking_enabled(data)
    generation = generation_of(data)
    async with services.model_for(data.model) as model:
        stream = await services.generate(request, model, generation, user=user)
        if data.stream:
            events = _MessageEvents(
                message_id, model.spec.id, stream.prompt_tokens, thinking=thinking
            )
            chunks = chunked_stream(stream, events, _stream_failure, done=b"")
            # Pings while the prompt is read, as Anthropic sends them, so that a client's
            # idle watchdog does not drop an answer that is still coming.
            return EventStream(with_keepalive(chunks, _named_event(Ping())))
        answer, finished = await unless_client_leaves(request.receive, collect_events(stream))
    return Message(
        id=message_id,
        content=content_of(answer, thinking=thinking),
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
    generation = count_request(data)
    async with services.model_for(data.model) as model:
        return CountTokensResponse(await model.engine.count_tokens(generation))


anthropic_router = Router(
    path="/v1/messages",
    route_handlers=[create_message, count_tokens],
    exception_handlers=ANTHROPIC_EXCEPTION_HANDLERS,
    opt=error_body(ErrorBody),
)
