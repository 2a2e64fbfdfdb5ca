"""One decode's batch: a token of every generating job, then chunks of prompts in the room
left, and what each slot's KV holds once it is decoded."""

from __future__ import annotations

from typing import Any

from locallab_gguf.engine.runtime.job import Job, JobPhase
from locallab_gguf.engine.runtime.llama import put_token
from locallab_gguf.engine.types import EngineConfig

# While other slots are generating, prompts get at most this many tokens of a step, so those
# streams pause for one short chunk at a time rather than for a whole long prompt.
MIXED_PROMPT_BUDGET = 128

# In the deterministic mode a slot's prompt advances at most this many tokens per step.
# llama.cpp's CPU flash attention switches to a tiled kernel at 64 queries per sequence, and the
# two kernels round differently: staying below it gives every token the same arithmetic whether
# it is evaluated in a long prompt, in a short remainder after a cache hit, or one at a time, so
# reusing a cached prefix or sharing a batch never changes a greedy answer. It costs a factor
# of about five on long prompts on CPUs (the narrow kernel is slow on long contexts), which is
# why the default mode takes chunks as large as the batch.
DETERMINISTIC_PROMPT_CHUNK = 63


def prompt_chunk(config: EngineConfig) -> int:
    """The most tokens of one prompt a decode reads."""
    return DETERMINISTIC_PROMPT_CHUNK if config.deterministic else config.n_batch


class Step:
    """What one decode holds: a token of each generating job and chunks of prompts."""

    __slots__ = ("chunks", "generating", "n_tokens")

    def __init__(self) -> None:
        self.generating: list[Job] = []
        self.chunks: list[tuple[Job, int]] = []  # (job, prompt tokens of it in this batch)
        self.n_tokens = 0

    def jobs(self) -> list[Job]:
        return self.generating + [job for job, _ in self.chunks]

    def prompt_tokens(self) -> int:
        return sum(take for _, take in self.chunks)

    def record_decoded(self) -> list[Job]:
        """Note what each slot's KV now holds; returns the jobs whose logits are ready."""
        ready = list(self.generating)
        for job in self.generating:
            assert job.slot is not None
            job.slot.cached.append(job.next_token)
            if job.draft is not None:
                job.slot.cached.extend(job.draft.tokens)
        for job, take in self.chunks:
            assert job.slot is not None
            job.slot.cached.extend(job.tokens[job.n_evaluated : job.n_evaluated + take])
            job.n_evaluated += take
            if job.logits_index is not None:
                ready.append(job)
        return ready


def fill_batch(batch: Any, active: list[Job], n_batch: int, prompt_chunk: int) -> Step:
    """One token of every generating job (and the draft after it, if it has one), then chunks
    of prompts (at most `prompt_chunk` tokens of each) in the room left of the llama_batch."""
    step = Step()
    for job in active:
        if job.phase is JobPhase.GENERATING:
            slot = job.slot
            assert slot is not None
            job.logits_index = step.n_tokens
            position = len(slot.cached)
            tokens = [job.next_token] if job.draft is None else [job.next_token, *job.draft.tokens]
            for token in tokens:
                put_token(batch, step.n_tokens, token, position, slot.seq_id, True)
                position += 1
                step.n_tokens += 1
            step.generating.append(job)
    budget = n_batch - step.n_tokens
    if step.generating:
        budget = min(budget, MIXED_PROMPT_BUDGET)
    for job in active:
        if job.phase is not JobPhase.PROMPT or job.awaited is not None or budget <= 0:
            continue
        take = _put_prompt_chunk(batch, job, step, min(budget, prompt_chunk))
        budget -= take
    batch.n_tokens = step.n_tokens
    return step


def _put_prompt_chunk(batch: Any, job: Job, step: Step, most: int) -> int:
    slot = job.slot
    assert slot is not None
    start = job.n_evaluated
    take = min(len(job.tokens) - start, most)
    last = len(job.tokens) - 1
    for position in range(start, start + take):
        is_last = position == last
        if is_last:
            job.logits_index = step.n_tokens
        put_token(batch, step.n_tokens, job.tokens[position], position, slot.seq_id, is_last)
        step.n_tokens += 1
    step.chunks.append((job, take))
    return take
