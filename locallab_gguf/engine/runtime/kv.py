"""The KV cache as the scheduler uses it: one sequence per slot, prefixes found and shared.

A request whose prompt shares a prefix with any slot, or with a prompt some slot is evaluating
right now, starts from those cells. With the per-slot layout (the default) each slot's
sequence has a stream of its own and the prefix is copied into it; in a unified pool
`llama_memory_seq_cp` tags the cells as the other sequence's too, without copying a byte
(engine/types.py's KvLayout says what each costs).

`plan_reuse` decides where a new request's prefix comes from; `KvPool` carries it out.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Sequence
from typing import Any

import llama_cpp
import msgspec

from locallab_gguf.engine.runtime.prefix import common_prefix
from locallab_gguf.engine.runtime.prompt_cache import CacheEntry, PromptCache


class ReuseSource(enum.Enum):
    """Where a request's already-computed prompt cells come from."""

    NONE = "none"  # evaluated from the first token
    SLOT = "slot"  # the slot it landed in held them from its last request
    SHARED = "shared"  # another slot holds them, or is evaluating them right now
    RAM = "ram"  # a state saved in the prompt cache's memory
    DISK = "disk"  # a state the prompt cache keeps on disk


class Holder(msgspec.Struct, frozen=True):
    """Another slot, as a possible source: what its KV holds, and what it is evaluating."""

    seq_id: int
    cached: list[int]
    evaluating: list[int] | None  # the prompt of a request still in its PROMPT phase


class ReusePlan(msgspec.Struct, frozen=True):
    source: ReuseSource
    tokens: int  # prompt tokens that need no evaluation
    from_seq: int = -1  # SHARED: the sequence that holds (or will hold) them
    entry: CacheEntry | None = None  # RAM, DISK: the entry to restore
    wait: bool = False  # SHARED: the source is still evaluating them


def plan_reuse(
    tokens: list[int],
    own_cached: list[int],
    holders: Sequence[Holder],
    cache: PromptCache | None,
) -> ReusePlan:
    """The largest prefix of `tokens` the request can have without evaluating it.

    At least one prompt token is always left to evaluate: its logits give the first new
    token. Among equal prefixes the cheapest source wins: the own slot (nothing to do), then
    another slot (a tag), then the cache (a copy), then a prompt still being evaluated (a
    wait).
    """
    limit = len(tokens) - 1
    best = ReusePlan(ReuseSource.SLOT, min(common_prefix(own_cached, tokens), limit))
    for holder in holders:
        held = min(common_prefix(holder.cached, tokens), limit)
        if held > best.tokens:
            best = ReusePlan(ReuseSource.SHARED, held, from_seq=holder.seq_id)
    if cache is not None:
        entry, matched = cache.longest_match(tokens)
        matched = min(matched, limit)
        if entry is not None and matched > best.tokens:
            source = ReuseSource.RAM if entry.in_memory else ReuseSource.DISK
            best = ReusePlan(source, matched, entry=entry)
    for holder in holders:
        if holder.evaluating is None:
            continue
        coming = min(common_prefix(holder.evaluating, tokens), limit)
        if coming > best.tokens:
            best = ReusePlan(ReuseSource.SHARED, coming, from_seq=holder.seq_id, wait=True)
    if best.tokens == 0:
        return ReusePlan(ReuseSource.NONE, 0)
    return best


class KvPool:
    """The context's KV memory, addressed by sequence (one per slot)."""

    def __init__(self, context: Any, unified: bool) -> None:
        self._context = context
        self._memory = llama_cpp.llama_get_memory(context)
        self.unified = unified

    def truncate(self, seq_id: int, keep: int) -> None:
        """Forget the sequence's cells from position `keep` on."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, keep, -1)

    def clear(self, seq_id: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)

    def share(self, src: int, dst: int, n_tokens: int) -> bool:
        """Make positions [0, n_tokens) of `src` those of `dst` too; `dst` is cleared first.
        False when llama.cpp refused the copy: `dst` is left empty.

        In a unified pool this tags the cells: no copy, no memory. Between streams it copies
        `src`'s state through memory. llama.cpp's own cross-stream `llama_memory_seq_cp` would
        copy on the device, but only at the next decode: a save or restore of `dst` before
        then would read or be overwritten by stale data, and nothing in the API forces the
        copy sooner. A prefix of 1,500 tokens of the default model is 35 MB: milliseconds,
        against seconds to evaluate it.
        """
        if self.unified:
            self.clear(dst)
            llama_cpp.llama_memory_seq_cp(self._memory, src, dst, 0, n_tokens)
            return True
        if not self.restore(dst, self.save(src)):
            return False
        self.truncate(dst, n_tokens)
        return True

    def save(self, seq_id: int) -> bytearray:
        """The sequence's cells (positions and K/V rows) as llama.cpp serializes them."""
        size = int(llama_cpp.llama_state_seq_get_size(self._context, seq_id))
        data = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(data)
        written = int(llama_cpp.llama_state_seq_get_data(self._context, view, size, seq_id))
        del view  # the bytearray cannot be resized while a ctypes view exports it
        if written < size:
            del data[written:]
        return data

    def restore(self, seq_id: int, data: bytearray) -> bool:
        """Replace the sequence's cells with a saved state; False when llama.cpp refuses it
        (no room in the pool, or a state of another shape)."""
        self.clear(seq_id)
        view = (ctypes.c_uint8 * len(data)).from_buffer(data)
        read = int(llama_cpp.llama_state_seq_set_data(self._context, view, len(data), seq_id))
        del view
        if read == 0:
            self.clear(seq_id)
            return False
        return True
