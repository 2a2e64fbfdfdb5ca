"""What llama.cpp logs (through the engine's log bridge) while a model loads: its own report of
the buffers it allocated, which the memory plan is checked against."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def llama_cpp_lines(load: Callable[[], object]) -> list[str]:
    """What llama.cpp logs while `load` runs."""
    llama_log = logging.getLogger("locallab_gguf.engine.runtime.llama")
    lines = _Lines()
    previous_level = llama_log.level
    llama_log.addHandler(lines)
    llama_log.setLevel(logging.DEBUG)
    try:
        load()
    finally:
        llama_log.removeHandler(lines)
        llama_log.setLevel(previous_level)
    return lines.lines


def reported_mib(lines: list[str], pattern: str) -> float:
    """The first size llama.cpp reported for `pattern` ("CPU KV buffer size"), in MiB."""
    for line in lines:
        found = re.search(pattern + r"\s*=\s*([\d.]+) MiB", line)
        if found:
            return float(found.group(1))
    raise AssertionError(f"llama.cpp did not report {pattern!r}")
