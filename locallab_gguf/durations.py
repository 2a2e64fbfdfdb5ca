"""Keep-alive durations, in Ollama's terms: how long an idle model stays resident.

A keep-alive is a duration: seconds as a number, or text such as "5m", "1h30m", "90s" or
"500ms". Zero unloads the model as soon as its last request ends; a negative duration keeps
it resident until it is unloaded by name (or to make room, when it is idle).
"""

from __future__ import annotations

import math
import re

from locallab_gguf.errors import InvalidRequest

# Kept resident until unloaded by name or to make room: a negative duration.
FOREVER = math.inf

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h)")
# Every text keep-alive: a minus or not, then seconds ("300", "0.5") or numbers with units
# ("1h30m", "500ms"). The same pattern is what the OpenAPI document states (ECMA and Python
# regular expressions read it alike: ASCII digits, no flags).
DURATION_PATTERN = rf"^-?(?:{_NUMBER}|(?:{_NUMBER}(?:ms|s|m|h))+)$"
_DURATION = re.compile(DURATION_PATTERN)


class InvalidKeepAlive(InvalidRequest):
    def __init__(self, value: object, field: str) -> None:
        super().__init__(
            f"{field}: {value!r} is not a duration; send seconds (300), text such as "
            '"5m", "1h30m" or "90s", 0 to unload after the request, or -1 to keep the model'
        )


def keep_alive_seconds(value: str | float, field: str = "keep_alive") -> float:
    """Seconds an idle model stays resident: 0 for none, FOREVER for a negative duration."""
    if isinstance(value, bool):
        raise InvalidKeepAlive(value, field)
    seconds = float(value) if isinstance(value, int | float) else _parse_duration(value, field)
    if math.isnan(seconds):
        raise InvalidKeepAlive(value, field)
    return FOREVER if seconds < 0 else seconds


def _parse_duration(text: str, field: str) -> float:
    # fullmatch: `$` alone would let a trailing newline through.
    if _DURATION.fullmatch(text) is None:
        raise InvalidKeepAlive(text, field)
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.removeprefix("-")
    parts = _PART.findall(body)
    if not parts:  # "300" means seconds, as Ollama reads it
        return sign * float(body)
    return sign * sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def describe_keep_alive(seconds: float) -> str:
    if seconds == FOREVER:
        return "until unloaded"
    return f"{seconds:g} s"
