"""Ollama's answers: NDJSON lines (one JSON object per line), the last one `done: true` with
Ollama's counts and durations in nanoseconds, or that last object alone with the whole text."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from locallab_gguf.api.common.streaming.tool_calls import ToolCall, ToolCallCollector
from locallab_gguf.api.ollama.wire import (
    AssistantMessage,
    ChatChunk,
    DoneReason,
    ErrorBody,
    FunctionCall,
    GenerateChunk,
    Timings,
    ToolCallBody,
)
from locallab_gguf.engine.types import (
    Event,
    Failed,
    Finished,
    ReasoningDelta,
    TextDelta,
)

NDJSON = "application/x-ndjson"
# What /api/ps shows for a model that stays until it is unloaded.


def now_stamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def ndjson_line(body: msgspec.Struct) -> bytes:
    return msgspec.json.encode(body) + b"\n"


class Clock:
    """Ollama's durations: from the request's arrival, to the first token, to the end."""

    def __init__(self) -> None:
        self.started = time.monotonic_ns()
        self.wall_started = time.time_ns()
        self.first: int | None = None
        self.load_ns = 0  # set when the request had to wait for its model to load

    def mark_first(self) -> None:
        if self.first is None:
            self.first = time.monotonic_ns()

    def timings(self, finished: Finished) -> Timings:
        now = time.monotonic_ns()
        first = self.first or now
        return Timings(
            total_duration=now - self.started,
            load_duration=self.load_ns,
            prompt_eval_count=finished.usage.prompt_tokens,
            prompt_eval_duration=first - self.started,
            eval_count=finished.usage.completion_tokens,
            eval_duration=now - first,
        )


def _done_reason(finished: Finished) -> DoneReason:
    return "length" if finished.finish_reason == "length" else "stop"


def _ollama_calls(calls: list[ToolCall]) -> list[ToolCallBody] | None:
    """Ollama's form of whole calls: arguments as objects; None when there are none."""
    if not calls:
        return None
    return [
        ToolCallBody(function=FunctionCall(name=call.name, arguments=call.arguments_object()))
        for call in calls
    ]


class Lines:
    """Ollama's NDJSON answer: a line per piece of text (or thinking), the tool calls whole
    once they are written, then the `done` line with the counts."""

    def __init__(self, model_id: str, clock: Clock, *, chat: bool) -> None:
        self.model_id = model_id
        self.clock = clock
        self.chat = chat
        self.calls = ToolCallCollector()

    def opening(self) -> bytes:
        return b""

    def encode(self, event: Event) -> bytes | None:
        self.clock.mark_first()
        if isinstance(event, TextDelta):
            return ndjson_line(self.body(event.text)) if event.text else None
        if isinstance(event, ReasoningDelta):
            return ndjson_line(self.body("", thinking=event.text)) if event.text else None
        if self.calls.feed(event):
            return None
        if isinstance(event, Finished):
            calls = _ollama_calls(self.calls.take())
            line = ndjson_line(self.body("", calls=calls)) if calls else b""
            return line + ndjson_line(self.body("", finished=event))
        return None

    def body(
        self,
        text: str,
        *,
        thinking: str | None = None,
        calls: list[ToolCallBody] | None = None,
        finished: Finished | None = None,
        done_reason: DoneReason | None = None,
    ) -> msgspec.Struct:
        """A line with `text`; the last one (`done`) once `finished`, with the counts, or with
        `done_reason` alone when nothing was generated (a load or an unload)."""
        counts: dict[str, Any] = {}
        if finished is not None:
            counts = msgspec.structs.asdict(self.clock.timings(finished))
            done_reason = _done_reason(finished)
        if done_reason is not None:
            counts["done_reason"] = done_reason
        if self.chat:
            message = AssistantMessage(
                role="assistant", content=text, thinking=thinking or None, tool_calls=calls
            )
            return ChatChunk(
                model=self.model_id,
                created_at=now_stamp(),
                message=message,
                done=done_reason is not None,
                **counts,
            )
        return GenerateChunk(
            model=self.model_id,
            created_at=now_stamp(),
            response=text,
            thinking=thinking or None,
            done=done_reason is not None,
            **counts,
        )

    def whole(self, events: list[Event], finished: Finished) -> msgspec.Struct:
        text = "".join(event.text for event in events if isinstance(event, TextDelta))
        thinking = "".join(event.text for event in events if isinstance(event, ReasoningDelta))
        for event in events:
            self.calls.feed(event)
        calls = _ollama_calls(self.calls.take())
        return self.body(text, thinking=thinking, calls=calls, finished=finished)


def failure_line(event: Failed) -> bytes:
    return ndjson_line(ErrorBody(error=event.detail))
