"""The JSON of tool calls, read incrementally: character by character as the model writes it,
reporting each call's name once it is known and its arguments' text as it arrives, without
waiting for the value to be whole (a streamed call's arguments go out as they are written).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable

from locallab_gguf.engine.tools.formats import CallLayout, FormatSpec

# The scanner's callbacks: a call to `name` starts (returns its index); arguments text.
StartCall = Callable[[str], int]
Arguments = Callable[[int, str], None]
SPACES = " \t\r\n"


class Scan(enum.Enum):
    MORE = "more"
    DONE = "done"  # the JSON value is complete
    BROKEN = "broken"  # not JSON, or not calls


class _Frame:
    __slots__ = ("call", "container", "key", "state")

    def __init__(self, container: str, call: bool) -> None:
        self.container = container  # "{" or "["
        self.call = call  # this object is a call
        self.key: str | None = None
        self.state = "key" if container == "{" else "value"  # key, colon, value, comma


class _CallState:
    __slots__ = ("arguments", "index", "name", "pending")

    def __init__(self) -> None:
        self.name: str | None = None
        self.index: int | None = None  # set once started
        self.arguments = ""  # seen before the name: sent when it comes
        self.pending = False  # arguments are being read


class JsonCalls:
    """Reads the JSON that follows an opening, character by character, and reports each call's
    name (once known) and its arguments' text as it arrives."""

    def __init__(
        self,
        spec: FormatSpec,
        start_call: StartCall,
        arguments: Arguments,
        tool_names: frozenset[str] | None = None,
    ) -> None:
        self._spec = spec
        self._tool_names = tool_names
        self._start_call = start_call
        self._send_arguments = arguments
        self._stack: list[_Frame] = []
        self._in_string = False
        self._escape = False
        self._string = ""  # the raw text of a key or a call's name being read
        self._capture_string = False
        self._primitive = False  # reading a number, true, false or null
        self._started = False
        self._call: _CallState | None = None
        self._args_depth = 0  # the stack's depth where the arguments value started
        self._args_closed = False  # this character closed the arguments' container

    def flush(self) -> None:
        """The output ended inside a call: its arguments so far are all it has."""
        call = self._call
        if call is not None and call.name is not None and call.index is None:
            self._begin(call)

    def feed(self, text: str) -> tuple[int, Scan]:
        for i, char in enumerate(text):
            self._args_closed = False
            call = self._call
            state = self._char(char)
            if call is not None and (call.pending or self._args_closed):
                self._argument_text(call, char)
            if state is not Scan.MORE:
                return i + 1, state
        return len(text), Scan.MORE

    def _char(self, char: str) -> Scan:
        if self._in_string:
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._in_string = False
                return self._string_done()
            if self._capture_string:
                self._string += char
            return Scan.MORE
        if self._primitive:
            if char not in ",}]" and char not in SPACES:
                return Scan.MORE
            self._primitive = False
            self._value_done()
        if char in SPACES:
            return Scan.MORE
        if not self._stack:
            if self._started or char not in "{[":
                return Scan.BROKEN
            self._started = True
            return self._open(char)
        frame = self._stack[-1]
        if frame.state == "key":
            if char == '"':
                self._begin_string(capture=True)
                return Scan.MORE
            return self._close() if char == "}" else Scan.BROKEN
        if frame.state == "colon":
            if char != ":":
                return Scan.BROKEN
            frame.state = "value"
            return Scan.MORE
        if frame.state == "comma":
            if char == ",":
                frame.state = "key" if frame.container == "{" else "value"
                return Scan.MORE
            if char == ("}" if frame.container == "{" else "]"):
                return self._close()
            return Scan.BROKEN
        if char == "]" and frame.container == "[":
            return self._close()
        self._value_starts(frame)
        if char in "{[":
            return self._open(char)
        if char == '"':
            self._begin_string(capture=frame.call and frame.key == "name")
            return Scan.MORE
        if char in "-0123456789tfn":
            self._primitive = True
            return Scan.MORE
        return Scan.BROKEN

    # -- structure -------------------------------------------------------------------------

    def _open(self, char: str) -> Scan:
        frame = _Frame(char, call=char == "{" and self._is_call_position())
        self._stack.append(frame)
        if frame.call:
            self._call = _CallState()
        return Scan.MORE

    def _close(self) -> Scan:
        frame = self._stack.pop()
        call = self._call
        if frame.call and call is not None:
            call.pending = False
            if call.name is None:
                return Scan.BROKEN
            if call.index is None:
                self._begin(call)
            self._call = None
        elif call is not None and call.pending and len(self._stack) == self._args_depth:
            call.pending = False
            self._args_closed = True
        if not self._stack:
            return Scan.DONE
        self._value_done()
        return Scan.MORE

    def _value_starts(self, frame: _Frame) -> None:
        call = self._call
        if call is not None and frame.call and frame.key in self._spec.arguments_keys:
            call.pending = True
            self._args_depth = len(self._stack)

    def _value_done(self, *, last_char_belongs: bool = False) -> None:
        frame = self._stack[-1]
        frame.state = "comma"
        call = self._call
        if call is not None and call.pending and len(self._stack) == self._args_depth:
            # A string or other plain arguments value has ended: a string's closing quote is
            # part of it, the character after a number is not.
            call.pending = False
            self._args_closed = last_char_belongs

    def _is_call_position(self) -> bool:
        stack = self._stack
        layout = self._spec.layout
        if layout is CallLayout.OBJECT:
            return not stack
        if layout is CallLayout.ARRAY:
            return len(stack) == 1 and stack[0].container == "["
        return (
            len(stack) == 2
            and stack[0].container == "{"
            and stack[0].key == "tool_calls"
            and stack[1].container == "["
        )

    # -- strings ---------------------------------------------------------------------------

    def _begin_string(self, *, capture: bool) -> None:
        self._in_string = True
        self._capture_string = capture
        self._string = ""

    def _string_done(self) -> Scan:
        frame = self._stack[-1]
        captured, self._capture_string = self._capture_string, False
        if frame.state == "key":
            frame.key = _decode_string(self._string)
            frame.state = "colon"
            return Scan.MORE
        call = self._call
        if captured and call is not None and call.name is None:
            call.name = _decode_string(self._string)
            if self._tool_names is not None and call.name not in self._tool_names:
                # JSON the grammar did not hold to the tools (say, written before its trigger):
                # no call to a tool the request does not offer.
                return Scan.BROKEN
        self._value_done(last_char_belongs=True)
        return Scan.MORE

    # -- arguments -------------------------------------------------------------------------

    def _argument_text(self, call: _CallState, char: str) -> None:
        if call.index is None and call.name is not None:
            self._begin(call)
        if call.index is not None:
            self._send_arguments(call.index, char)
        else:
            call.arguments += char  # the name comes after: sent when it does

    def _begin(self, call: _CallState) -> None:
        assert call.name is not None
        call.index = self._start_call(call.name)
        if call.arguments:
            self._send_arguments(call.index, call.arguments)
            call.arguments = ""


def _decode_string(raw: str) -> str:
    try:
        value = json.loads(f'"{raw}"')
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw
