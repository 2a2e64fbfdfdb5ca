"""The Responses API's stream events: each carries `type` and `sequence_number`."""

from __future__ import annotations

from typing import Any

import msgspec

from locallab_gguf.api.responses.wire import (
    Item,
    OutputText,
    ReasoningText,
    ResponseBody,
)

# -- Stream events -------------------------------------------------------------------------
# Each carries `type` and `sequence_number`, which counts up from 0 through one stream.


class ResponseEvent(msgspec.Struct, kw_only=True, tag_field="type"):
    sequence_number: int = 0


class ResponseCreated(ResponseEvent, tag="response.created"):
    response: ResponseBody


class ResponseInProgress(ResponseEvent, tag="response.in_progress"):
    response: ResponseBody


class ResponseCompleted(ResponseEvent, tag="response.completed"):
    response: ResponseBody


class ResponseIncomplete(ResponseEvent, tag="response.incomplete"):
    response: ResponseBody


class ResponseFailed(ResponseEvent, tag="response.failed"):
    response: ResponseBody


class OutputItemAdded(ResponseEvent, tag="response.output_item.added"):
    output_index: int
    item: Item


class OutputItemDone(ResponseEvent, tag="response.output_item.done"):
    output_index: int
    item: Item


class ContentPartAdded(ResponseEvent, tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class ContentPartDone(ResponseEvent, tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class OutputTextDelta(ResponseEvent, tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputTextDone(ResponseEvent, tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class ReasoningTextDelta(ResponseEvent, tag="response.reasoning_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningTextDone(ResponseEvent, tag="response.reasoning_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str


class ArgumentsDelta(ResponseEvent, tag="response.function_call_arguments.delta"):
    item_id: str
    output_index: int
    delta: str


class ArgumentsDone(ResponseEvent, tag="response.function_call_arguments.done"):
    item_id: str
    output_index: int
    arguments: str


class ErrorEvent(ResponseEvent, tag="error"):
    code: str | None
    message: str
    param: str | None = None


StreamEvent = (
    ResponseCreated
    | ResponseInProgress
    | ResponseCompleted
    | ResponseIncomplete
    | ResponseFailed
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputTextDelta
    | OutputTextDone
    | ReasoningTextDelta
    | ReasoningTextDone
    | ArgumentsDelta
    | ArgumentsDone
    | ErrorEvent
)
