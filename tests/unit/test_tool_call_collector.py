"""The one collector of streamed tool calls that every API surface answers whole."""

from __future__ import annotations

from locallab_gguf.api.common.streaming.tool_calls import ToolCall, ToolCallCollector
from locallab_gguf.engine.types import Event, TextDelta, ToolCallArguments, ToolCallStarted


def test_calls_come_whole_in_the_order_they_were_opened() -> None:
    events: list[Event] = [
        TextDelta(text="Let me look."),
        ToolCallStarted(index=0, id="call_a", name="weather"),
        ToolCallArguments(index=0, text='{"city": '),
        ToolCallStarted(index=1, id="call_b", name="time"),
        ToolCallArguments(index=0, text='"Oslo"}'),
        ToolCallArguments(index=1, text="{}"),
    ]
    calls = ToolCallCollector.of(events)
    assert calls == [
        ToolCall(index=0, id="call_a", name="weather", arguments='{"city": "Oslo"}'),
        ToolCall(index=1, id="call_b", name="time", arguments="{}"),
    ]
    assert calls[0].arguments_object() == {"city": "Oslo"}


def test_only_call_events_are_taken_and_take_forgets_them() -> None:
    collector = ToolCallCollector()
    assert not collector.feed(TextDelta(text="hi"))
    assert collector.feed(ToolCallStarted(index=0, id="call_a", name="f"))
    assert collector.feed(ToolCallArguments(index=0, text='{"cut'))
    (call,) = collector.take()
    assert call.arguments_object() == {}  # cut off before its arguments were whole
    assert collector.take() == []
