"""Download progress printed for a person: bytes, rate and time left."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from locallab_gguf.sizes import format_bytes

_REDRAW_SECONDS = 0.1
_BAR_WIDTH = 24


class ProgressPrinter:
    """Prints a download's progress: bytes, rate and time left.

    On a terminal one line is redrawn in place; elsewhere (logs, pipes) a plain line is
    written every `interval` seconds, and always one at the start and one at the end.
    """

    def __init__(
        self,
        label: str,
        stream: TextIO,
        *,
        redraw: bool,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self._stream = stream
        self._redraw = redraw
        self._interval = _REDRAW_SECONDS if redraw else interval
        self._clock = clock
        self._started: float | None = None
        self._start_bytes = 0
        self._last_print: float | None = None
        self._finished = False
        self._width = 0

    def __call__(self, done: int, total: int | None) -> None:
        now = self._clock()
        if self._started is None:
            self._started, self._start_bytes = now, done
        finished = total is not None and done >= total
        if self._finished or not (
            finished or self._last_print is None or now - self._last_print >= self._interval
        ):
            return
        self._last_print = now
        self._finished = finished
        self._write(self.describe(done, total, now), finished)

    def describe(self, done: int, total: int | None, now: float) -> str:
        elapsed = now - (self._started if self._started is not None else now)
        rate = (done - self._start_bytes) / elapsed if elapsed > 0 else 0.0
        if total is None:
            parts = [f"{self.label}: {format_bytes(done)}"]
        else:
            percent = 100 * done // max(total, 1)
            parts = [f"{self.label}: {format_bytes(done)} of {format_bytes(total)} ({percent}%)"]
        if rate > 0:
            parts.append(f"{format_bytes(round(rate))}/s")
        if total is not None and done >= total:
            parts.append(f"done in {format_duration(elapsed)}")
        elif total is not None and rate > 0:
            parts.append(f"{format_duration((total - done) / rate)} left")
        line = ", ".join(parts)
        if self._redraw and total:
            filled = _BAR_WIDTH * min(max(done, 0), total) // total
            line = "[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "] " + line
        return line

    def _write(self, line: str, finished: bool) -> None:
        if self._redraw:
            # Pad to the longest line so far: a shorter line must cover the previous one.
            self._width = max(self._width, len(line))
            self._stream.write("\r" + line.ljust(self._width) + ("\n" if finished else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


def format_duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
