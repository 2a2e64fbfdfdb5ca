"""Where a slot's prompt starts: cells it already holds, a prefix another slot holds or is
evaluating right now, or a state saved in the prompt cache; and saving a slot's state to the
cache before its cells go to another request.

`plan_reuse` (engine/runtime/kv.py) decides; `SlotReuse` carries the plan out on the slots and
counts the tokens each source saved. It runs on the engine thread, between decodes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import msgspec

from locallab_gguf.engine.runtime.cache_ledger import SETTLE_SECONDS, LedgerAccount, LedgerFull
from locallab_gguf.engine.runtime.job import Job, JobPhase, Slot, evaluating
from locallab_gguf.engine.runtime.kv import Holder, KvPool, ReusePlan, ReuseSource, plan_reuse
from locallab_gguf.engine.runtime.llama import LlamaModel, llama_cpp_version
from locallab_gguf.engine.runtime.prefix import common_prefix
from locallab_gguf.engine.runtime.prompt_cache import MIN_SAVED_TOKENS, PromptCache, model_sha256
from locallab_gguf.engine.types import EngineConfig, PromptReuse

log = logging.getLogger(__name__)


class SlotReuse:
    def __init__(self, kv: KvPool, slots: list[Slot], cache: PromptCache | None) -> None:
        self._kv = kv
        self._slots = slots
        self._cache = cache
        self._lock = threading.Lock()  # the counters are read from any thread
        self._reused = dict.fromkeys(ReuseSource, 0)

    def stats(self) -> PromptReuse:
        cached = self._cache.stats() if self._cache is not None else PromptReuse()
        with self._lock:
            return msgspec.structs.replace(
                cached,
                slot_tokens=self._reused[ReuseSource.SLOT],
                shared_tokens=self._reused[ReuseSource.SHARED],
                ram_tokens=self._reused[ReuseSource.RAM],
                disk_tokens=self._reused[ReuseSource.DISK],
            )

    def settle(self) -> bool:
        """Drop the saved states other models' caches took for the shared budget; whether
        there were any (then the engine reports, so its stats show what it holds now)."""
        return self._cache is not None and self._cache.settle()

    def wait_idle(self, wake: threading.Condition) -> bool:
        """Wait (holding `wake`'s lock) for work; a cache that shares the server's budget
        looks every SETTLE_SECONDS for states to give up meanwhile. Whether it gave any."""
        if self._cache is None or not self._cache.shared:
            wake.wait()
            return False
        wake.wait(SETTLE_SECONDS)
        return self._cache.settle()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    def truncate(self, slot: Slot, keep: int) -> None:
        if keep < len(slot.cached):
            self._kv.truncate(slot.seq_id, keep)
            del slot.cached[keep:]

    def start_prompt(self, job: Job) -> None:
        """Give the job's slot the largest prefix of its prompt that needs no evaluation."""
        slot = job.slot
        assert slot is not None
        job.phase = JobPhase.PROMPT
        slot.cache_key = job.cache_key
        holders = [
            Holder(other.seq_id, other.cached, evaluating(other.job))
            for other in self._slots
            if other is not slot
        ]
        plan = plan_reuse(job.tokens, slot.cached, holders, self._cache)
        if self._cache is not None:
            kept = plan.tokens if plan.source in (ReuseSource.NONE, ReuseSource.SLOT) else 0
            if len(slot.cached) - kept >= MIN_SAVED_TOKENS:
                self._save(slot)  # its cells are about to go to this request
            if plan.entry is None:
                self._cache.count_lookup(hit=False)
        if plan.source is ReuseSource.SHARED and plan.wait:
            job.awaited = plan
            own = min(common_prefix(slot.cached, job.tokens), len(job.tokens) - 1)
            self.truncate(slot, own)
            job.n_evaluated = job.cached_tokens = own
            return
        reused = plan.tokens
        if plan.source in (ReuseSource.NONE, ReuseSource.SLOT):
            self.truncate(slot, reused)
        elif plan.source is ReuseSource.SHARED:
            reused = self._share(self._slots[plan.from_seq], slot, reused)
        else:
            reused = self._restore(slot, plan)
        job.n_evaluated = job.cached_tokens = reused
        self._count(plan.source if reused else ReuseSource.NONE, reused)

    def resolve_awaited(self, active: list[Job]) -> None:
        """Jobs waiting for a prefix another slot evaluates take it once it is there, or once
        that slot stopped evaluating it (then they take what it got to)."""
        for job in active:
            plan = job.awaited
            if plan is None:
                continue
            slot, source = job.slot, self._slots[plan.from_seq]
            assert slot is not None
            held = min(common_prefix(source.cached, job.tokens), plan.tokens)
            coming = evaluating(source.job)
            if held < plan.tokens and coming and common_prefix(coming, job.tokens) >= plan.tokens:
                continue  # still on its way
            job.awaited = None
            if held > job.n_evaluated:
                job.n_evaluated = job.cached_tokens = self._share(source, slot, held)
                self._count(ReuseSource.SHARED, job.n_evaluated)
            else:
                self._count(ReuseSource.SLOT, job.n_evaluated)

    def _share(self, source: Slot, slot: Slot, tokens: int) -> int:
        """Give the slot the first `tokens` cells of another; returns how many it got."""
        if self._kv.share(source.seq_id, slot.seq_id, tokens):
            slot.cached = source.cached[:tokens]
            return tokens
        log.warning("llama.cpp refused to copy a prefix of %d tokens between slots", tokens)
        slot.cached = []
        return 0

    def _save(self, slot: Slot) -> None:
        assert self._cache is not None
        if self._cache.worth_saving(slot.cached):
            self._cache.put(list(slot.cached), self._kv.save(slot.seq_id))

    def _restore(self, slot: Slot, plan: ReusePlan) -> int:
        """Restore a cached state into the slot, cut to the plan's prefix; returns its length."""
        cache, entry = self._cache, plan.entry
        assert cache is not None and entry is not None
        data = cache.take(entry)
        restored = data is not None and self._kv.restore(slot.seq_id, data)
        cache.count_lookup(hit=restored)
        if not restored:
            log.warning(
                "a saved prompt state of %d tokens could not be restored; it is dropped",
                len(entry.tokens),
            )
            cache.forget(entry)
            slot.cached = []
            self._kv.clear(slot.seq_id)
            return 0
        slot.cached = list(entry.tokens)
        self.truncate(slot, plan.tokens)
        return plan.tokens

    def _count(self, source: ReuseSource, tokens: int) -> None:
        with self._lock:
            self._reused[source] += tokens


def best_slot(idle: list[Slot], tokens: list[int], cache_key: str | None = None) -> Slot:
    """The idle slot whose cache shares the longest prefix; among equals, the one holding the
    request's own conversation, then the least used.

    A request of a named conversation looks only among the slots that hold its own
    conversation or none, while there is one: taking a slot that holds another named
    conversation would overwrite it, and the prefix they share (an agent's instructions) is
    copied from that slot anyway when the request starts (`plan_reuse` looks at every slot)."""
    if cache_key is not None:
        idle = [slot for slot in idle if slot.cache_key in (None, cache_key)] or idle

    def rank(slot: Slot) -> tuple[int, bool, int]:
        own = cache_key is not None and slot.cache_key == cache_key
        return common_prefix(slot.cached, tokens), own, -slot.last_used

    return max(idle, key=rank)


def open_prompt_cache(model: LlamaModel, config: EngineConfig) -> PromptCache | None:
    if config.prompt_cache_bytes <= 0:
        return None
    directory = Path(config.prompt_cache_dir) if config.prompt_cache_dir else None
    ledger = None
    if config.prompt_cache_ledger is not None:
        try:
            ledger = LedgerAccount(Path(config.prompt_cache_ledger))
        except LedgerFull as exc:
            log.warning("no prompt cache for this model: %s", exc)
            return None
    return PromptCache(
        config.prompt_cache_bytes,
        directory,
        model_sha256(model.path, directory) if directory is not None else None,
        build=f"llama-cpp-python {llama_cpp_version()}",
        ledger=ledger,
    )
