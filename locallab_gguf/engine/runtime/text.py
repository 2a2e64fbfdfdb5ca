"""Token bytes -> text, one token at a time, at a cost that does not grow with the output."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class Utf8Stream:
    """Decodes a byte stream; a character split across tokens is held until it is whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    @property
    def pending_bytes(self) -> int:
        return len(self._decoder.getstate()[0])


class StopMatcher:
    """Finds stop strings in streamed text, even when a stop string spans several pieces.

    Text that could still turn out to be the start of a stop string is held back, so a stop
    string is never emitted, not even in part.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.matched: str | None = None  # the stop string that was reached, once one is

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was reached)."""
        if not self._stops:
            return text, False
        window = self._held + text
        first = -1
        for stop in self._stops:
            at = window.find(stop)
            if at != -1 and (first == -1 or at < first):
                first, self.matched = at, stop
        if first != -1:
            self._held = ""
            return window[:first], True
        keep = self._held_suffix_length(window)
        self._held = window[len(window) - keep :] if keep else ""
        return window[: len(window) - keep], False

    def flush(self) -> str:
        """At the end of generation, what was held back is ordinary text."""
        held, self._held = self._held, ""
        return held

    def _held_suffix_length(self, window: str) -> int:
        # The longest suffix of `window` that is a proper prefix of some stop string.
        for length in range(min(len(window), self._longest - 1), 0, -1):
            suffix = window[-length:]
            if any(stop.startswith(suffix) for stop in self._stops):
                return length
        return 0
