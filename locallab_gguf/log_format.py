"""The process's log lines: text for people, or one JSON object per line (--log-format json).

A record may carry structured fields in its `fields` attribute (the access log does); the
JSON lines hold them as keys of their own, the text lines only in the message.

Messages carry what clients sent (a path, a user name), so a text line escapes every
character that is not printable: a newline, a terminal escape or a NUL in a request cannot
start a forged line or reach the terminal. JSON escapes them by itself.

A warning or error repeated word for word (a flood of refused connections, the event loop
unable to accept while file descriptors run out) is written once per interval; the next
line of it that is written says how many were left out.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Messages repeated within an interval that are remembered at once; past it, a new message
# is written rather than tracked (repeats of it are then not held back).
_MAX_TRACKED = 1024


def escape_unprintable(text: str) -> str:
    """`text` with each character that is not printable written as a Python escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    known = _ESCAPES.get(char)
    if known is not None:
        return known
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT with the message escaped; a traceback below it keeps its lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        escaped = copy.copy(record)
        escaped.msg = escape_unprintable(record.getMessage())
        escaped.args = None
        return super().format(escaped)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _Repeats:
    __slots__ = ("left_out", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.left_out = 0


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once per `interval` seconds for each distinct message
    (logger, level and text); the next one let through says how many were held back."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, int, str], _Repeats] = {}
        self._lock = threading.Lock()  # handlers filter outside their own lock

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self.interval <= 0:
            return True
        message = record.getMessage()
        key = (record.name, record.levelno, message)
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.since < self.interval:
                seen.left_out += 1
                return False
            if seen is None and len(self._seen) >= _MAX_TRACKED:
                self._forget_before(now - self.interval)
            if seen is not None or len(self._seen) < _MAX_TRACKED:
                self._seen[key] = _Repeats(now)
        if seen is not None and seen.left_out:
            record.msg = (
                f"{message} [{seen.left_out:,} more like this in the "
                f"{now - seen.since:.0f} s before, not logged]"
            )
            record.args = None
        return True

    def _forget_before(self, moment: float) -> None:
        for key in [key for key, seen in self._seen.items() if seen.since < moment]:
            del self._seen[key]


def configure_logging(level: str, log_format: LogFormat, repeat_interval: float = 10.0) -> None:
    """Once per process, before anything logs; replaces whatever was configured."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RepeatFilter(repeat_interval))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
