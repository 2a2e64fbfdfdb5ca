"""Engine events -> the response's output items and the semantic events of its stream.

One assembler serves both answers: a stream sends each event it makes as it makes it, a whole
answer feeds every engine event and keeps only the finished response. Engine events arrive
as runs (thinking, then text, then calls); each run is one output item, opened when its first
event arrives and closed when another kind starts or the answer ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from locallab_gguf.api.responses.events import (
    ArgumentsDelta,
    ArgumentsDone,
    ContentPartAdded,
    ContentPartDone,
    ErrorEvent,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    ReasoningTextDelta,
    ReasoningTextDone,
    ResponseCompleted,
    ResponseCreated,
    ResponseEvent,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
)
from locallab_gguf.api.responses.requests import ToolNames, new_id
from locallab_gguf.api.responses.sealing import ReasoningSeal
from locallab_gguf.api.responses.wire import (
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    Item,
    ItemStatus,
    MessageItem,
    OutputText,
    OutputTokensDetails,
    ReasoningBody,
    ReasoningItem,
    ReasoningText,
    ResponseBody,
    ResponseError,
    ResponseRequest,
    ResponseUsage,
    TextConfigBody,
)
from locallab_gguf.engine.types import (
    Event,
    Failed,
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallArguments,
    ToolCallStarted,
)


def response_shell(data: ResponseRequest, model_id: str) -> ResponseBody:
    """The response before any output: the request's settings echoed, as OpenAI does."""
    text_format: dict[str, Any] = {"type": "text"}
    if data.text is not None and data.text.format is not None:
        text_format = msgspec.to_builtins(data.text.format)
    reasoning = data.reasoning
    return ResponseBody(
        id=new_id("resp"),
        created_at=int(time.time()),
        status="in_progress",
        instructions=data.instructions,
        max_output_tokens=data.max_output_tokens,
        model=model_id,
        output=[],
        parallel_tool_calls=data.parallel_tool_calls is not False,
        previous_response_id=data.previous_response_id,
        reasoning=ReasoningBody(
            effort=None if reasoning is None else reasoning.effort,
            summary=None if reasoning is None else reasoning.summary,
        ),
        store=data.store is not False,
        temperature=1.0 if data.temperature is None else data.temperature,
        text=TextConfigBody(format=text_format),
        tool_choice=msgspec.to_builtins(data.tool_choice or "auto"),
        tools=msgspec.to_builtins(data.tools or []),
        top_p=1.0 if data.top_p is None else data.top_p,
        user=data.user,
        metadata=data.metadata or {},
        prompt_cache_key=data.prompt_cache_key,
    )


@dataclass
class _OpenItem:
    kind: Literal["reasoning", "message", "call"]
    id: str
    output_index: int
    parts: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    namespace: str | None = None


class ResponseAssembler:
    """Builds one response from its engine events. `seal` is set when the client asked for
    `reasoning.encrypted_content`; `on_done` receives the final response (to store it)."""

    def __init__(
        self,
        shell: ResponseBody,
        names: ToolNames,
        seal: ReasoningSeal | None,
        on_done: Callable[[ResponseBody], None] | None = None,
    ) -> None:
        self.response = shell
        self._names = names
        self._seal = seal
        self._on_done = on_done
        self._open: _OpenItem | None = None
        self._sequence = 0

    def opening(self) -> list[ResponseEvent]:
        return [
            self._next(ResponseCreated(response=self._snapshot())),
            self._next(ResponseInProgress(response=self._snapshot())),
        ]

    def feed(self, event: Event) -> list[ResponseEvent]:
        if isinstance(event, ReasoningDelta):
            return self._append("reasoning", event.text)
        if isinstance(event, TextDelta):
            return self._append("message", event.text) if event.text else []
        if isinstance(event, ToolCallStarted):
            events = self._close("completed")
            namespace, name = self._names.split(event.name)
            self._open = _OpenItem(
                "call",
                new_id("fc"),
                len(self.response.output),
                call_id=event.id,
                name=name,
                namespace=namespace,
            )
            events.append(self._added(self._open))
            return events
        if isinstance(event, ToolCallArguments):
            opened = self._open
            if opened is None or opened.kind != "call" or not event.text:
                return []
            opened.parts.append(event.text)
            delta = ArgumentsDelta(
                item_id=opened.id, output_index=opened.output_index, delta=event.text
            )
            return [self._next(delta)]
        if isinstance(event, Finished):
            return self.finish(event)
        return self.fail(event)

    def finish(self, finished: Finished) -> list[ResponseEvent]:
        cut_off = finished.finish_reason == "length"
        events = self._close("incomplete" if cut_off else "completed")
        usage = finished.usage
        response = self.response
        response.usage = ResponseUsage(
            input_tokens=usage.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=usage.cached_tokens),
            output_tokens=usage.completion_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=usage.reasoning_tokens),
            total_tokens=usage.total_tokens,
        )
        final: ResponseEvent
        if cut_off:
            response.status = "incomplete"
            response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
            final = ResponseIncomplete(response=self._snapshot())
        else:
            response.status = "completed"
            response.completed_at = int(time.time())
            final = ResponseCompleted(response=self._snapshot())
        if self._on_done is not None:
            self._on_done(response)
        events.append(self._next(final))
        return events

    def fail(self, failed: Failed) -> list[ResponseEvent]:
        events = self._close("incomplete")
        code = "invalid_request" if failed.cause == "request" else "server_error"
        events.append(self._next(ErrorEvent(code=code, message=failed.detail)))
        self.response.status = "failed"
        self.response.error = ResponseError(code=code, message=failed.detail)
        events.append(self._next(ResponseFailed(response=self._snapshot())))
        return events

    def _append(self, kind: Literal["reasoning", "message"], text: str) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        opened = self._open
        if opened is None or opened.kind != kind:
            events = self._close("completed")
            opened = self._open = _OpenItem(
                kind, new_id("rs" if kind == "reasoning" else "msg"), len(self.response.output)
            )
            events.append(self._added(opened))
            empty: OutputText | ReasoningText = (
                ReasoningText(text="") if kind == "reasoning" else OutputText(text="")
            )
            events.append(
                self._next(
                    ContentPartAdded(
                        item_id=opened.id,
                        output_index=opened.output_index,
                        content_index=0,
                        part=empty,
                    )
                )
            )
        opened.parts.append(text)
        item_id, index = opened.id, opened.output_index
        delta: ResponseEvent = (
            ReasoningTextDelta(item_id=item_id, output_index=index, content_index=0, delta=text)
            if kind == "reasoning"
            else OutputTextDelta(item_id=item_id, output_index=index, content_index=0, delta=text)
        )
        events.append(self._next(delta))
        return events

    def _added(self, opened: _OpenItem) -> ResponseEvent:
        return self._next(
            OutputItemAdded(
                output_index=opened.output_index, item=self._item(opened, "in_progress")
            )
        )

    def _close(self, status: ItemStatus) -> list[ResponseEvent]:
        opened, self._open = self._open, None
        if opened is None:
            return []
        text = "".join(opened.parts)
        index = opened.output_index
        events: list[ResponseEvent] = []
        if opened.kind == "call":
            events.append(
                self._next(ArgumentsDone(item_id=opened.id, output_index=index, arguments=text))
            )
        else:
            item_id = opened.id
            part: OutputText | ReasoningText
            done: ResponseEvent
            if opened.kind == "reasoning":
                part = ReasoningText(text=text)
                done = ReasoningTextDone(
                    item_id=item_id, output_index=index, content_index=0, text=text
                )
            else:
                part = OutputText(text=text)
                done = OutputTextDone(
                    item_id=item_id, output_index=index, content_index=0, text=text
                )
            events.append(self._next(done))
            events.append(
                self._next(
                    ContentPartDone(item_id=item_id, output_index=index, content_index=0, part=part)
                )
            )
        item = self._item(opened, status)
        self.response.output.append(item)
        events.append(self._next(OutputItemDone(output_index=index, item=item)))
        return events

    def _item(self, opened: _OpenItem, status: ItemStatus) -> Item:
        text = "".join(opened.parts)
        done = status != "in_progress"
        if opened.kind == "call":
            return FunctionCallItem(
                id=opened.id,
                call_id=opened.call_id,
                name=opened.name,
                namespace=opened.namespace,
                arguments=text,
                status=status,
            )
        if opened.kind == "message":
            return MessageItem(
                id=opened.id,
                role="assistant",
                status=status,
                content=[OutputText(text=text)] if done else [],
            )
        return ReasoningItem(
            id=opened.id,
            content=[ReasoningText(text=text)] if done else [],
            encrypted_content=self._seal.seal(text) if done and self._seal is not None else None,
            status=status,
        )

    def _snapshot(self) -> ResponseBody:
        # An event holds the response as it was then; later output must not change it.
        return msgspec.structs.replace(self.response, output=list(self.response.output))

    def _next(self, event: ResponseEvent) -> ResponseEvent:
        event.sequence_number = self._sequence
        self._sequence += 1
        return event


def sse(event: ResponseEvent) -> bytes:
    """One server-sent event, named by its type as OpenAI names them."""
    kind = str(type(event).__struct_config__.tag)
    return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"


class StreamEncoder:
    """The `ChunkEncoder` of a streamed response (api/common/sse.chunked_stream)."""

    def __init__(self, assembler: ResponseAssembler) -> None:
        self.assembler = assembler

    def opening(self) -> bytes:
        return b"".join(sse(event) for event in self.assembler.opening())

    def encode(self, event: Event) -> bytes | None:
        return b"".join(sse(each) for each in self.assembler.feed(event)) or None

    def failure(self, event: Failed) -> bytes:
        return b"".join(sse(each) for each in self.assembler.fail(event))
