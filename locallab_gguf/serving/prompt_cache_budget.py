"""The server's one prompt-cache budget (--cache-ram), shared by every resident chat model.

Each model's engine keeps its saved prompt states in its own worker process; the ledger file
made here lets them share one budget (engine/runtime/cache_ledger.py). The room planner counts the
part of the budget not yet held beside each new model's weights and KV cache, so models
loaded later cannot promise the caches memory the machine does not have.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from locallab_gguf.engine.runtime.cache_ledger import create_ledger, held_bytes
from locallab_gguf.placement.hardware import read_memory
from locallab_gguf.sizes import human_bytes

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Without --cache-ram the prompt cache may take this share of the memory free at start, up to
# a cap: saved prompts are worth keeping, but not at the cost of the system's memory.
DEFAULT_CACHE_RAM_SHARE = 0.25
DEFAULT_CACHE_RAM_CAP_MIB = 8192


def prompt_cache_bytes(cache_ram_mib: int | None) -> int:
    """--cache-ram in bytes; without it, a share of the free memory up to a cap."""
    if cache_ram_mib is not None:
        return cache_ram_mib * MIB
    free_mib = read_memory().available_bytes // MIB
    return int(min(free_mib * DEFAULT_CACHE_RAM_SHARE, DEFAULT_CACHE_RAM_CAP_MIB)) * MIB


class PromptCacheBudget:
    """The budget and its ledger, made once per server (0 bytes: no prompt cache at all)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self.ledger_path: Path | None = None
        if budget_bytes > 0:
            self._directory = tempfile.TemporaryDirectory(prefix="locallab-prompt-cache-")
            self.ledger_path = Path(self._directory.name) / "ledger"
            create_ledger(self.ledger_path, budget_bytes)
            log.info("prompt cache: %s for all resident models", human_bytes(budget_bytes))

    @classmethod
    def of_settings(cls, cache_ram_mib: int | None) -> PromptCacheBudget:
        return cls(prompt_cache_bytes(cache_ram_mib))

    def held_bytes(self) -> int:
        return held_bytes(self.ledger_path) if self.ledger_path is not None else 0

    def room_left(self) -> int:
        """What the caches may still grow by: memory no new model may count on."""
        return max(0, self.budget_bytes - self.held_bytes())

    def close(self) -> None:
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None
