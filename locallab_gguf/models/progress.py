"""Download progress: byte counts from hf_hub_download, forwarded to a callback.

hf_hub_download takes any class as `tqdm_class` that it can build with tqdm's keyword
arguments and then feed through `update(n)`; `reporter_class` makes such a class around a
callback, so the server can show progress in its status and the CLI can print it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Self

ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes downloaded so far, total bytes or None when the hub did not say)."""


class ByteReporter:
    """The part of tqdm's interface that hf_hub_download uses."""

    def __init__(self, *, total: int | None = None, initial: int = 0, **_: object) -> None:
        self.total = total
        self.n = initial
        self.report()

    def report(self) -> None:
        raise NotImplementedError

    def update(self, n: float | None = 1) -> None:
        # A resumed transfer that must start over reports a negative update.
        self.n += int(n or 0)
        self.report()

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        pass


def reporter_class(on_progress: ProgressCallback) -> type[ByteReporter]:
    class Reporter(ByteReporter):
        def report(self) -> None:
            on_progress(self.n, self.total)

    return Reporter
