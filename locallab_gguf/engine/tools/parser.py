"""The model's streamed text -> answer text, thinking, and tool calls, as events.

`OutputParser.feed` takes text as it is generated, in pieces of any size, and returns the
events that text completes; the events depend only on the whole text, never on where it was
cut. Text that may be the start of a marker (`<think>`, `<tool_call>`, `{"tool_calls"`) is held
back until it is known; text the parser cannot read as a call goes out as answer text. The
JSON after a call's opening is read by the incremental scanner (json_scanner.py).
"""

from __future__ import annotations

import enum
import secrets
import string

from locallab_gguf.engine.tools.formats import SPECS, FormatSpec, ToolFormat
from locallab_gguf.engine.tools.json_scanner import SPACES, JsonCalls, Scan
from locallab_gguf.engine.types import (
    Event,
    ReasoningDelta,
    TextDelta,
    ToolCallArguments,
    ToolCallStarted,
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_ALNUM = string.ascii_letters + string.digits


def new_call_id(short: bool) -> str:
    if short:
        return "".join(secrets.choice(_ALNUM) for _ in range(9))
    return "call_" + secrets.token_hex(12)


class _Mode(enum.Enum):
    START = "start"  # nothing read yet: a <think> may open
    THINK = "think"  # inside <think>...</think>
    TEXT = "text"  # answer text, watching for a call's opening
    CALL = "call"  # inside the JSON of calls
    CLOSER = "closer"  # after a call's JSON, expecting its closing tag


class _Match(enum.Enum):
    NONE = "none"
    PARTIAL = "partial"  # the text so far could still become the opening
    FULL = "full"


class OutputParser:
    """One request's output; `tool_format` None reads no calls, `reasoning` splits thinking.

    `thinking` says the prompt already opened a <think> block (some templates do).
    """

    def __init__(
        self,
        tool_format: ToolFormat | None,
        *,
        reasoning: bool,
        thinking: bool = False,
        tool_names: frozenset[str] | None = None,
    ) -> None:
        self._spec: FormatSpec | None = None if tool_format is None else SPECS[tool_format]
        # A call is to one of these (None: any name); JSON naming another tool is text.
        self._tool_names = tool_names
        self._mode = (
            _Mode.THINK if reasoning and thinking else (_Mode.START if reasoning else _Mode.TEXT)
        )
        self._held = ""
        self._events: list[Event] = []
        self._calls = 0  # calls started so far
        self._section_calls = 0  # calls started in the current JSON section
        self._section_raw = ""  # the current section's text, in case it is no call after all
        self._scanner: JsonCalls | None = None
        # After a call (or at the start), spaces are dropped and the JSON opening may appear.
        self._after_call = False
        self._text_seen = False  # non-space answer text since the start or the last call

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def thinking(self) -> bool:
        """Whether what the model writes now is thinking (inside <think>...</think>)."""
        return self._mode is _Mode.THINK

    def feed(self, text: str) -> list[Event]:
        self._held += text
        self._advance(final=False)
        return self._take()

    def finish(self) -> list[Event]:
        """The end of the output: what was held back is settled."""
        self._advance(final=True)
        held, self._held = self._held, ""
        if self._mode is _Mode.THINK:
            self._reasoning(held)
        elif self._mode is _Mode.START:
            self._content(held)
        elif self._mode is _Mode.CALL:
            if self._section_calls == 0:
                self._content(self._section_raw)  # a cut or broken opening: it is text
            elif self._scanner is not None:
                self._scanner.flush()
        elif self._mode is _Mode.TEXT and held and not (self._calls and not held.strip()):
            self._content(held)
        return self._take()

    # -- the states ------------------------------------------------------------------------

    def _advance(self, *, final: bool) -> None:
        while self._held:
            before = (self._mode, len(self._held))
            if self._mode is _Mode.START:
                self._start(final)
            elif self._mode is _Mode.THINK:
                self._think(final)
            elif self._mode is _Mode.TEXT:
                self._text(final)
            elif self._mode is _Mode.CALL:
                self._call()
            else:
                self._closer(final)
            if (self._mode, len(self._held)) == before:
                return  # waiting for more text

    def _start(self, final: bool) -> None:
        stripped = self._held.lstrip(SPACES)
        if stripped.startswith(THINK_OPEN):
            self._held = stripped[len(THINK_OPEN) :]
            self._mode = _Mode.THINK
        elif not final and THINK_OPEN.startswith(stripped):
            return
        else:
            self._mode = _Mode.TEXT

    def _think(self, final: bool) -> None:
        at = self._held.find(THINK_CLOSE)
        if at != -1:
            self._reasoning(self._held[:at])
            self._held = self._held[at + len(THINK_CLOSE) :]
            self._mode = _Mode.TEXT
            self._after_call = True  # the answer starts after the spaces that follow
            return
        keep = 0 if final else _partial_suffix(self._held, THINK_CLOSE)
        self._reasoning(self._held[: len(self._held) - keep])
        self._held = self._held[len(self._held) - keep :]

    def _text(self, final: bool) -> None:
        held = self._held
        if self._after_call:
            skip = self._spec.separators if self._spec is not None and self._calls else ""
            stripped = held.lstrip(SPACES + skip)
            if not stripped:
                if final:  # only spaces after the last call: nothing more to say
                    self._held = ""
                return
            held = self._held = stripped
            self._after_call = False
        at, match, json_start, body = self._find_opening(held, final)
        if match is _Match.NONE:
            self._emit_text(held, final)
            return
        before = held[:at]
        if match is _Match.PARTIAL:
            # Spaces before a possible opening wait with it.
            out = before.rstrip(SPACES)
            self._content(out)
            self._held = held[len(out) :]
            return
        self._content(before.rstrip(SPACES))  # spaces before a call are dropped
        self._open_section(held[at:json_start] if body else "", held[json_start:] if body else "")

    def _open_section(self, tag: str, rest: str) -> None:
        assert self._spec is not None
        self._mode = _Mode.CALL
        self._section_raw = tag
        self._section_calls = 0
        self._scanner = JsonCalls(self._spec, self._start_call, self._arguments, self._tool_names)
        self._held = rest

    def _call(self) -> None:
        scanner = self._scanner
        assert scanner is not None
        consumed, state = scanner.feed(self._held)
        self._section_raw += self._held[:consumed]
        self._held = self._held[consumed:]
        if state is Scan.BROKEN:
            self._mode = _Mode.TEXT
            self._text_seen = True
            if self._section_calls == 0:
                self._content(self._section_raw)
            self._section_raw = ""
        elif state is Scan.DONE:
            self._text_seen = False
            self._section_raw = ""
            spec = self._spec
            assert spec is not None
            if spec.closer is not None:
                self._mode = _Mode.CLOSER
            else:
                self._mode = _Mode.TEXT
                self._after_call = True

    def _closer(self, final: bool) -> None:
        spec = self._spec
        assert spec is not None and spec.closer is not None
        stripped = self._held.lstrip(SPACES)
        if stripped.startswith(spec.closer):
            self._held = stripped[len(spec.closer) :]
        elif not final and spec.closer.startswith(stripped):
            return
        self._mode = _Mode.TEXT
        self._after_call = True

    # -- openings --------------------------------------------------------------------------

    def _find_opening(self, text: str, final: bool) -> tuple[int, _Match, int, bool]:
        """The first opening in `text`: (where, how far it matched, where its JSON starts,
        whether a section starts)."""
        spec = self._spec
        best: tuple[int, _Match, int, bool] = (len(text), _Match.NONE, 0, False)
        if spec is None:
            return best
        for tag in spec.tags:
            at = text.find(tag)
            if at != -1 and at < best[0]:
                best = (at, _Match.FULL, at + len(tag), True)
            keep = 0 if final else _partial_suffix(text, tag)
            if keep and len(text) - keep < best[0]:
                best = (len(text) - keep, _Match.PARTIAL, 0, False)
        for opening in spec.json_openings:
            for at in self._json_candidates(text):
                if at >= best[0]:
                    break
                match = _match_tokens(text, at, opening)
                if match is _Match.PARTIAL and final:
                    match = _Match.NONE
                if match is not _Match.NONE:
                    best = (at, match, at, match is _Match.FULL)
                    break
        return best

    def _json_candidates(self, text: str) -> list[int]:
        spec = self._spec
        assert spec is not None
        if spec.json_at_start:
            if self._text_seen:
                return []
            first = len(text) - len(text.lstrip(SPACES))
            return [first] if first < len(text) and text[first] == "{" else []
        return [i for i, char in enumerate(text) if char == "{"]

    # -- events ----------------------------------------------------------------------------

    def _emit_text(self, text: str, final: bool) -> None:
        # Trailing spaces wait, as they are dropped if a call follows; with no tools, text goes
        # out as it is.
        out = text if final or self._spec is None else text.rstrip(SPACES)
        self._held = text[len(out) :]
        self._content(out)

    def _content(self, text: str) -> None:
        if not text:
            return
        if text.strip(SPACES):
            self._text_seen = True
        last = self._events[-1] if self._events else None
        if isinstance(last, TextDelta):
            self._events[-1] = TextDelta(text=last.text + text)
        else:
            self._events.append(TextDelta(text=text))

    def _reasoning(self, text: str) -> None:
        if not text:
            return
        last = self._events[-1] if self._events else None
        if isinstance(last, ReasoningDelta):
            self._events[-1] = ReasoningDelta(text=last.text + text)
        else:
            self._events.append(ReasoningDelta(text=text))

    def _start_call(self, name: str) -> int:
        assert self._spec is not None
        index = self._calls
        self._calls += 1
        self._section_calls += 1
        self._events.append(
            ToolCallStarted(index=index, id=new_call_id(self._spec.short_ids), name=name)
        )
        return index

    def _arguments(self, index: int, text: str) -> None:
        if not text:
            return
        last = self._events[-1] if self._events else None
        if isinstance(last, ToolCallArguments) and last.index == index:
            self._events[-1] = ToolCallArguments(index=index, text=last.text + text)
        else:
            self._events.append(ToolCallArguments(index=index, text=text))

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a proper start of `marker`."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


def _match_tokens(text: str, at: int, tokens: tuple[str, ...]) -> _Match:
    """Whether `tokens`, with at most one space between them, are written at `at`.

    One space, as the tools' grammars write JSON (`space ::= " "?`) and as their lazy
    triggers (grammars.py) match it: JSON opened otherwise (`{` and a newline) never starts
    the grammar in `auto` mode, so a call read from it would have arguments nothing held to
    the tool's schema; it stays text."""
    i = at
    for n, token in enumerate(tokens):
        if n and text[i : i + 1] == " ":
            i += 1
        rest = text[i : i + len(token)]
        if rest != token:
            return (
                _Match.PARTIAL
                if token.startswith(rest) and i + len(rest) == len(text)
                else (_Match.NONE)
            )
        i += len(token)
    return _Match.FULL
