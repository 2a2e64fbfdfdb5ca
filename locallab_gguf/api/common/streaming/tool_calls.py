"""Tool calls as the engine streams them, gathered whole: every surface answers them whole
somewhere (OpenAI's and Anthropic's whole answers, each Ollama line)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from locallab_gguf.api.common.fields import arguments_object
from locallab_gguf.engine.types import Event, ToolCallArguments, ToolCallStarted


class ToolCall(msgspec.Struct, frozen=True):
    """One call, whole: its arguments are the JSON text the model wrote."""

    index: int
    id: str
    name: str
    arguments: str

    def arguments_object(self) -> dict[str, Any]:
        """The arguments as an object; {} for a call cut off before they were whole."""
        return arguments_object(self.arguments)


class ToolCallCollector:
    """Reads `ToolCallStarted` (a call opened) and `ToolCallArguments` (a piece of its
    arguments) out of a stream of events; `take` gives the calls gathered so far, in the
    order they were opened."""

    def __init__(self) -> None:
        self._started: dict[int, ToolCallStarted] = {}
        self._arguments: dict[int, list[str]] = {}

    @classmethod
    def of(cls, events: Iterable[Event]) -> list[ToolCall]:
        """The calls in a whole answer's events."""
        collector = cls()
        for event in events:
            collector.feed(event)
        return collector.take()

    def feed(self, event: Event) -> bool:
        """Gather the event if it belongs to a call; returns whether it did."""
        if isinstance(event, ToolCallStarted):
            self._started[event.index] = event
            self._arguments[event.index] = []
            return True
        if isinstance(event, ToolCallArguments):
            self._arguments.setdefault(event.index, []).append(event.text)
            return True
        return False

    def take(self) -> list[ToolCall]:
        """The calls gathered since the last `take`, and forget them."""
        calls = [
            ToolCall(
                index=index,
                id=started.id,
                name=started.name,
                arguments="".join(self._arguments[index]),
            )
            for index, started in self._started.items()
        ]
        self._started.clear()
        self._arguments.clear()
        return calls
