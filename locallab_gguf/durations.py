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
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


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
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        seconds = _parse_duration(value.strip(), field)
    if math.isnan(seconds):
        raise InvalidKeepAlive(value, field)
    return FOREVER if seconds < 0 else seconds


def _parse_duration(text: str, field: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)  # "300" means seconds, as Ollama reads it
    except ValueError:
        pass
    position, seconds = 0, 0.0
    for match in _PART.finditer(body):
        if match.start() != position:
            raise InvalidKeepAlive(text, field)
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(body):
        raise InvalidKeepAlive(text, field)
    return sign * seconds


def describe_keep_alive(seconds: float) -> str:
    if seconds == FOREVER:
        return "until unloaded"
    return f"{seconds:g} s"
