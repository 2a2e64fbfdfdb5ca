"""Engine events -> OpenAI's response bodies, whole or as server-sent chunks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from locallab_gguf.api.common.streaming.sse import json_event
from locallab_gguf.api.common.streaming.tool_calls import ToolCallCollector
from locallab_gguf.api.openai.wire import (
    AssistantMessageBody,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkDelta,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    ErrorBody,
    ErrorDetail,
    FunctionCallBody,
    FunctionChunk,
    TokenLogprob,
    ToolCallBody,
    ToolCallChunk,
    TopLogprob,
    Usage,
)
from locallab_gguf.engine.types import (
    Event,
    Failed,
    Finished,
    ReasoningDelta,
    TextDelta,
    TokenLogprobs,
    ToolCallArguments,
    ToolCallStarted,
)


class Reply:
    """What every body of one answer shares: its id, creation time and model."""

    def __init__(self, id_prefix: str, model_id: str, *, logprobs: bool) -> None:
        self.id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model_id
        self.logprobs = logprobs


def chat_completion(reply: Reply, events: Sequence[Event], finished: Finished) -> ChatCompletion:
    """The whole answer: the same events a stream sends, put together."""
    deltas = [event for event in events if isinstance(event, TextDelta)]
    content = "".join(delta.text for delta in deltas)
    reasoning = "".join(event.text for event in events if isinstance(event, ReasoningDelta))
    calls = _tool_calls(events)
    message = AssistantMessageBody(
        role="assistant",
        content=None if calls and not content else content,
        refusal=None,
        tool_calls=calls or None,
        reasoning_content=reasoning or None,
    )
    return ChatCompletion(
        id=reply.id,
        created=reply.created,
        model=reply.model,
        choices=[
            ChatCompletionChoice(
                index=0,
                message=message,
                logprobs=_chat_logprobs(deltas) if reply.logprobs else None,
                finish_reason=finished.finish_reason,
            )
        ],
        usage=Usage.of(finished.usage),
    )


def _tool_calls(events: Sequence[Event]) -> list[ToolCallBody]:
    return [
        ToolCallBody(
            id=call.id, function=FunctionCallBody(name=call.name, arguments=call.arguments)
        )
        for call in ToolCallCollector.of(events)
    ]


def completion(reply: Reply, deltas: Sequence[TextDelta], finished: Finished) -> Completion:
    return Completion(
        id=reply.id,
        created=reply.created,
        model=reply.model,
        choices=[
            CompletionChoice(
                index=0,
                text="".join(delta.text for delta in deltas),
                logprobs=_completion_logprobs(deltas, 0) if reply.logprobs else None,
                finish_reason=finished.finish_reason,
            )
        ],
        usage=Usage.of(finished.usage),
    )


class ChatChunks:
    """chat.completion.chunk events: the role, the content deltas, the finish_reason, and
    with include_usage one more chunk with no choices and the usage.

    `usage_on_finish` puts the usage on the finish_reason chunk instead, as LocalLab's /chat
    stream has always sent it.
    """

    def __init__(self, reply: Reply, *, include_usage: bool, usage_on_finish: bool = False) -> None:
        self.reply = reply
        self.include_usage = include_usage
        self.usage_on_finish = usage_on_finish

    def opening(self) -> bytes:
        return self._chunk(
            [ChatChunkChoice(index=0, delta=ChunkDelta(role="assistant", content=""))]
        )

    def encode(self, event: Event) -> bytes | None:
        if isinstance(event, TextDelta):
            if not event.text:
                return None
            logprobs = _chat_logprobs([event]) if self.reply.logprobs else None
            delta = ChunkDelta(content=event.text)
            return self._chunk([ChatChunkChoice(index=0, delta=delta, logprobs=logprobs)])
        if isinstance(event, ReasoningDelta):
            return self._delta(ChunkDelta(reasoning_content=event.text))
        if isinstance(event, ToolCallStarted):
            # As OpenAI streams a call: id, type and name first, the arguments after.
            opening = ToolCallChunk(
                index=event.index,
                id=event.id,
                type="function",
                function=FunctionChunk(name=event.name, arguments=""),
            )
            return self._delta(ChunkDelta(tool_calls=[opening]))
        if isinstance(event, ToolCallArguments):
            piece = ToolCallChunk(index=event.index, function=FunctionChunk(arguments=event.text))
            return self._delta(ChunkDelta(tool_calls=[piece]))
        if isinstance(event, Finished):
            last = ChatChunkChoice(index=0, delta=ChunkDelta(), finish_reason=event.finish_reason)
            ending = self._chunk([last])
            if self.include_usage:
                ending += self._chunk([], Usage.of(event.usage))
            return ending
        return None

    def _delta(self, delta: ChunkDelta) -> bytes:
        return self._chunk([ChatChunkChoice(index=0, delta=delta)])

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        reply = self.reply
        body = ChatCompletionChunk(
            id=reply.id, created=reply.created, model=reply.model, choices=choices, usage=usage
        )
        return json_event(body)


class CompletionChunks:
    """text_completion events: text deltas, the finish_reason, and the usage if asked."""

    def __init__(self, reply: Reply, *, include_usage: bool) -> None:
        self.reply = reply
        self.include_usage = include_usage
        self._offset = 0  # characters sent so far: each token's text_offset counts from it

    def opening(self) -> bytes:
        return b""

    def encode(self, event: Event) -> bytes | None:
        if isinstance(event, TextDelta):
            if not event.text:
                return None
            logprobs = _completion_logprobs([event], self._offset) if self.reply.logprobs else None
            self._offset += len(event.text)
            choice = CompletionChoice(
                index=0, text=event.text, logprobs=logprobs, finish_reason=None
            )
            return self._chunk([choice])
        if isinstance(event, Finished):
            last = CompletionChoice(
                index=0, text="", logprobs=None, finish_reason=event.finish_reason
            )
            ending = self._chunk([last])
            if self.include_usage:
                ending += self._chunk([], Usage.of(event.usage))
            return ending
        return None

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        reply = self.reply
        body = Completion(
            id=reply.id, created=reply.created, model=reply.model, choices=choices, usage=usage
        )
        return json_event(body)


def stream_failure(event: Failed) -> bytes:
    """A failure mid-stream, as an error object the OpenAI SDKs raise as an APIError."""
    kind = "invalid_request_error" if event.cause == "request" else "server_error"
    return json_event(ErrorBody(ErrorDetail(message=event.detail, type=kind)))


def _text(piece: bytes) -> str:
    # A token may hold part of a character; `bytes` carries it exactly.
    return piece.decode("utf-8", errors="replace")


def _all_logprobs(deltas: Sequence[TextDelta]) -> list[TokenLogprobs]:
    return [entry for delta in deltas for entry in delta.logprobs]


def _chat_logprobs(deltas: Sequence[TextDelta]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=_text(entry.piece),
                logprob=entry.logprob,
                bytes=list(entry.piece),
                top_logprobs=[
                    TopLogprob(token=_text(top.piece), logprob=top.logprob, bytes=list(top.piece))
                    for top in entry.top
                ],
            )
            for entry in _all_logprobs(deltas)
        ]
    )


def _completion_logprobs(deltas: Sequence[TextDelta], offset: int) -> CompletionLogprobs:
    entries = _all_logprobs(deltas)
    tokens = [_text(entry.piece) for entry in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[entry.logprob for entry in entries],
        top_logprobs=[{_text(top.piece): top.logprob for top in entry.top} for entry in entries],
        text_offset=offsets,
    )
