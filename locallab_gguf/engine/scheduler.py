"""Continuous batching: every active request advances by one token per llama_decode.

One thread owns the llama.cpp context. Each step it gathers the next token of every
generating slot, fills the rest of the batch with chunks of waiting prompts, decodes once,
and samples each slot at its own batch position with that request's own sampler.

Each slot is one KV sequence, by default in a stream of its own (engine/types.py's KvLayout).
By default a prompt advances in chunks as large as the batch; its prefix can come from any
slot that holds it, or from a prompt being evaluated right now (engine/kv.py), and saved
prompt states come back from the prompt cache (engine/prompt_cache.py). In the deterministic
mode prompts advance 63 tokens at a time, so a request's result does not depend on what else
is in the batch: a greedy or seeded request gives the same text alone, beside seven others,
or from the cache. Either way a slot keeps the KV of its last request, so a request that
shares a prefix with it (the next turn of a chat, a common system prompt) only evaluates the
rest.

Callers never touch the context: they `submit` a request with an id, receive its events in
batches through the `deliver` callback (one call per step, on the engine thread, with an empty
batch when a step produced no event) and may `cancel` it by id at any time.
"""

from __future__ import annotations

import collections
import enum
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp
import msgspec

from locallab_gguf.engine.activity import Doing
from locallab_gguf.engine.chat_encoder import ChatEncoder
from locallab_gguf.engine.chat_template import ChatTemplate
from locallab_gguf.engine.hooks import EngineHooks, NoHooks
from locallab_gguf.engine.kv import Holder, KvPool, ReusePlan, ReuseSource, plan_reuse
from locallab_gguf.engine.llama import LlamaModel, llama_cpp_version
from locallab_gguf.engine.logprobs import read_distribution
from locallab_gguf.engine.prefix import common_prefix
from locallab_gguf.engine.prompt_cache import MIN_SAVED_TOKENS, PromptCache, model_sha256
from locallab_gguf.engine.resume import Resume
from locallab_gguf.engine.sampling import Sampler
from locallab_gguf.engine.text import StopMatcher, Utf8Stream
from locallab_gguf.engine.tools.parser import OutputParser
from locallab_gguf.engine.tools.prompt import ChatPrompter, PreparedChat
from locallab_gguf.engine.types import (
    MAX_TOP_LOGPROBS,
    Accepted,
    EngineConfig,
    EngineInfo,
    EngineStats,
    Event,
    EventBatch,
    Failed,
    Finished,
    FinishReason,
    FlashAttention,
    GenerationRequest,
    KvLayout,
    PromptReuse,
    TextDelta,
    TokenLogprobs,
    Usage,
)
from locallab_gguf.errors import (
    EngineFailure,
    InvalidRequest,
    ModelLoadFailed,
    Overloaded,
    PromptTooLong,
)

log = logging.getLogger(__name__)

Deliver = Callable[[EventBatch], None]
T = TypeVar("T")

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
# llama.cpp's flash_attn_type for each setting; AUTO leaves the choice to llama.cpp (on where
# the backend has the kernel).
FLASH_ATTN_TYPES = {
    FlashAttention.AUTO: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    FlashAttention.ON: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    FlashAttention.OFF: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
THROUGHPUT_WINDOW_S = 10.0


class _Slot:
    __slots__ = ("cached", "job", "last_used", "seq_id")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []  # tokens whose KV this sequence holds, from position 0
        self.job: _Job | None = None
        self.last_used = 0


class JobPhase(enum.Enum):
    """Where a request is in its life, as llama.cpp's server names a slot's state."""

    QUEUED = "queued"  # waiting for a free slot, or given one and not yet started
    PROMPT = "prompt"  # in a slot, its prompt evaluated a chunk per step
    GENERATING = "generating"  # its last sampled token waits to be decoded
    ENDED = "ended"  # finished, failed or cancelled; the slot is free again


class _Job:
    __slots__ = (
        "awaited",
        "cancelled",
        "completion_tokens",
        "id",
        "logits_index",
        "logprobs",
        "max_tokens",
        "n_evaluated",
        "next_token",
        "parser",
        "pending_logprobs",
        "phase",
        "prompt_length",
        "queue_seconds",
        "sampler",
        "slot",
        "stops",
        "submitted_at",
        "tokens",
        "utf8",
    )

    def __init__(
        self,
        job_id: int,
        tokens: list[int],
        max_tokens: int,
        stops: StopMatcher,
        sampler: Sampler,
        logprobs: int | None,
        parser: OutputParser | None = None,
    ) -> None:
        self.id = job_id
        self.parser = parser  # reads calls and thinking out of the text, when the chat asks
        self.tokens = tokens
        self.prompt_length = len(tokens)  # a resumed job's tokens also hold its completion
        self.max_tokens = max_tokens
        self.stops = stops
        self.sampler = sampler
        self.utf8 = Utf8Stream()
        self.phase = JobPhase.QUEUED
        self.slot: _Slot | None = None
        self.n_evaluated = 0  # prompt tokens already in the slot's KV
        # PROMPT: a prefix another slot is evaluating now, taken from it once it is there
        self.awaited: ReusePlan | None = None
        self.next_token = 0  # GENERATING: the sampled token the next step decodes
        self.logits_index: int | None = None  # where its logits are in the step's batch
        self.completion_tokens = 0
        self.cancelled = False
        self.logprobs = logprobs  # None, or how many alternatives each token reports
        self.pending_logprobs: list[TokenLogprobs] = []  # tokens whose text is not out yet
        self.submitted_at = time.monotonic()
        self.queue_seconds = 0.0

    def take_logprobs(self) -> tuple[TokenLogprobs, ...]:
        if not self.pending_logprobs:
            return ()
        taken = tuple(self.pending_logprobs)
        self.pending_logprobs.clear()
        return taken


class BatchEngine:
    def __init__(
        self,
        model: LlamaModel,
        config: EngineConfig,
        deliver: Deliver,
        hooks: EngineHooks | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self._deliver = deliver
        self._hooks: EngineHooks = hooks or NoHooks()
        template_source = config.chat_template or model.chat_template()
        self._template = (
            ChatTemplate(template_source, model.bos_token, model.eos_token, model.control_texts())
            if template_source
            else None
        )
        self._prompter = (
            None
            if self._template is None
            else ChatPrompter(
                self._template, lambda text, markup: model.tokenize(text, False, markup)
            )
        )
        unified = config.kv_layout is KvLayout.UNIFIED
        self._context = self._create_context(config.context_per_slot(model.n_ctx_train), unified)
        # llama.cpp may round the size up; what it reports is what each slot really has. A
        # unified pool reports its whole size: each request still gets one slot's share, so
        # the pool can never run out of cells, however the slots' prefixes are shared.
        self.n_ctx = int(
            llama_cpp.llama_n_ctx(self._context) // config.n_parallel
            if unified
            else llama_cpp.llama_n_ctx_seq(self._context)
        )
        self._kv = KvPool(self._context, unified)
        self._prompt_chunk = DETERMINISTIC_PROMPT_CHUNK if config.deterministic else config.n_batch
        self._cache = _open_prompt_cache(model, config)
        self._reused = dict.fromkeys(ReuseSource, 0)
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        # Embeddings from this model, in a context of their own opened on first use.
        self.encoder = ChatEncoder(model, config)
        self.info = EngineInfo(
            context_length=self.n_ctx,
            trained_context_length=model.n_ctx_train,
            n_layer=model.n_layer,
            n_gpu_layers=model.n_gpu_layers,
            model_size_bytes=model.size_bytes,
            chat_template_source=(
                None if template_source is None else "registry" if config.chat_template else "gguf"
            ),
            parallel=config.n_parallel,
            n_vocab=model.n_vocab,
            kv_shape=(self.n_ctx, config.n_parallel),
        )
        self._slots = [_Slot(seq_id) for seq_id in range(config.n_parallel)]
        self._step = 0
        self._eog: dict[int, bool] = {}

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: collections.deque[_Job] = collections.deque()
        self._jobs: dict[int, _Job] = {}  # every job that is waiting or active
        self._accepting = True
        self._stopping = False

        self._prompt_tokens_total = 0
        self._prompt_tokens_evaluated = 0
        self._completion_tokens_total = 0
        self._requests_finished = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="locallab-engine", daemon=True)
        self._thread.start()

    def _create_context(self, per_slot: int, unified: bool) -> Any:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = per_slot * self.config.n_parallel
        params.n_batch = self.config.n_batch
        params.n_ubatch = self.config.n_batch
        params.n_seq_max = self.config.n_parallel
        params.kv_unified = unified  # see KvLayout
        params.flash_attn_type = FLASH_ATTN_TYPES[self.config.flash_attn]
        params.n_threads = self.config.n_threads
        params.n_threads_batch = self.config.n_threads_batch
        params.no_perf = True
        context = llama_cpp.llama_init_from_model(self.model.handle, params)
        if not context:
            raise ModelLoadFailed(
                f"llama.cpp could not create a context of {per_slot:,} tokens for each of "
                f"{self.config.n_parallel} slots for {self.model.path.name}; "
                "start with a smaller --ctx or fewer --parallel slots"
            )
        return context

    # -- called from any thread -------------------------------------------------------------

    def submit(
        self, job_id: int, request: GenerationRequest, resume: Resume | None = None
    ) -> Accepted:
        """Tokenize and check the request, then queue it; raises when it cannot be served.

        With `resume`, the request continues from the tokens it produced before the engine
        process that served it died: they are evaluated after its prompt."""
        prepared = self._prepare(request)
        tokens = list(prepared.tokens)
        if not tokens:
            # The first token is sampled from the logits of the prompt's last token.
            raise InvalidRequest("the prompt is empty (0 tokens); send at least one character")
        prompt_length = len(tokens)
        if resume is not None:
            tokens += resume.completion_tokens
        if len(tokens) >= self.n_ctx:
            raise PromptTooLong(len(tokens), self.n_ctx)
        if request.logprobs is not None and not 0 <= request.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(
                f"{request.logprobs} alternatives per token were asked for; "
                f"at most {MAX_TOP_LOGPROBS} are reported"
            )
        # The sampler is built here, off the engine thread, to keep steps short.
        sampler = Sampler(request.sampling, self.model.vocab, self.model.n_vocab, prepared.grammar)
        job = _Job(
            job_id,
            tokens,
            # A limit beyond the room left is no error, as in OpenAI's and Anthropic's APIs:
            # the answer runs until the context is full and ends as cut off by its length.
            min(request.max_tokens, self.n_ctx - prompt_length),
            StopMatcher(request.stop),
            sampler,
            request.logprobs,
            prepared.parser,
        )
        if resume is not None:
            self._resume(job, prompt_length, resume)
        with self._lock:
            refusal = self._refusal_locked()
            if refusal is not None:
                sampler.close()
                raise refusal
            self._pending.append(job)
            self._jobs[job_id] = job
            self._prompt_tokens_total += len(tokens)
            self._wake.notify()
        return Accepted(prompt_tokens=prompt_length)

    def _resume(self, job: _Job, prompt_length: int, resume: Resume) -> None:
        """Bring the job to where it was: its sampler, count, held text and log-probabilities."""
        completion = resume.completion_tokens
        job.prompt_length = prompt_length
        job.completion_tokens = len(completion)
        job.sampler.resume(completion, resume.rng_draws)
        job.pending_logprobs = list(resume.held_logprobs)
        # The text of these tokens went out already; feeding it again restores what the UTF-8
        # decoder and the stop-string matcher held back, so nothing is repeated or lost.
        for token in completion:
            text = job.utf8.feed(self.model.piece(token))
            if text:
                safe, _ = job.stops.feed(text)
                if safe and job.parser is not None:
                    job.parser.feed(safe)  # its events went out before the crash

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """The request's prompt length in tokens, as `submit` would count it; queues nothing."""
        return len(self._prepare(request).tokens)

    def cancel(self, job_id: int) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancelled = True  # the engine thread lets go of it at its next step
            with self._lock:
                self._wake.notify()

    def stats(self) -> EngineStats:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - THROUGHPUT_WINDOW_S:
                self._recent.popleft()
            window_tokens = sum(n for _, n in self._recent)
            span = (now - self._recent[0][0]) if self._recent else 0.0
            return EngineStats(
                slots_total=len(self._slots),
                slots_busy=sum(1 for slot in self._slots if slot.job is not None),
                queue_depth=len(self._pending),
                queue_capacity=self.config.queue_size,
                context_size=self.n_ctx * len(self._slots),
                context_used=sum(len(slot.cached) for slot in self._slots),
                prompt_tokens_total=self._prompt_tokens_total,
                prompt_tokens_evaluated=self._prompt_tokens_evaluated,
                completion_tokens_total=self._completion_tokens_total,
                requests_finished=self._requests_finished,
                tokens_per_second=window_tokens / span if span > 0.5 else 0.0,
                prompt_reuse=self._reuse_stats_locked(),
            )

    def _reuse_stats_locked(self) -> PromptReuse:
        cached = self._cache.stats() if self._cache is not None else PromptReuse()
        return msgspec.structs.replace(
            cached,
            slot_tokens=self._reused[ReuseSource.SLOT],
            shared_tokens=self._reused[ReuseSource.SHARED],
            ram_tokens=self._reused[ReuseSource.RAM],
            disk_tokens=self._reused[ReuseSource.DISK],
        )

    def is_idle(self) -> bool:
        with self._lock:
            return not self._jobs

    def close(self, drain: bool) -> None:
        """Stop taking requests; finish (drain) or cancel those in flight; free the model."""
        with self._lock:
            self._accepting = False
            if not drain:
                for job in self._jobs.values():
                    job.cancelled = True
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        self.encoder.close(drain)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._context)
        self.model.close()

    def _prepare(self, request: GenerationRequest) -> PreparedChat:
        if request.messages is None:
            assert request.prompt is not None
            tokens = self.model.tokenize(request.prompt, add_special=True)
            return PreparedChat(tokens=tokens, parser=None, grammar=None)
        if self._prompter is None:
            raise InvalidRequest(
                f"{self.model.path.name} has no chat template; use /generate with a raw prompt "
                "or set chat_template for this model in models.toml"
            )
        # The rendered template already holds the BOS token where the model wants one.
        return self._prompter.prepare(request.messages, request.chat)

    def _refusal_locked(self) -> Exception | None:
        if not self._accepting:
            return EngineFailure("the model is being unloaded; retry the request")
        waiting = len(self._pending)
        free = sum(1 for slot in self._slots if slot.job is None)
        if waiting - free >= self.config.queue_size:
            # A rough wait: the queue ahead drains one slot-full of requests at a time.
            rounds = math.ceil((waiting + 1) / len(self._slots))
            return Overloaded(waiting, retry_after=max(1, 2 * rounds))
        return None

    # -- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._stopping:
                    self._wake.wait()
                if not self._jobs and self._stopping:
                    return
                admitted = self._admit_locked()
            events: EventBatch = []
            for job in admitted:
                self._hooks.calling(Doing.PREPARING, job.id)
                remember = functools.partial(job.sampler.remember_prompt, job.tokens)
                self._guarded(job, events, "reading its prompt", remember)
            try:
                for job in admitted:
                    if job.phase is not JobPhase.ENDED:  # its prompt could not be read
                        self._start_prompt(job)
                self._drop_cancelled(events)
                self._step_once(events)
            except Exception as exc:  # a bug outside any one request must not hang them all
                log.exception("engine step failed")
                self._fail_active(events, f"the engine failed: {exc}")
            self._hooks.between_calls()
            # Every step reports, even without events: a worker process sends its stats along.
            self._deliver(events)

    def _admit_locked(self) -> list[_Job]:
        admitted: list[_Job] = []
        idle = [slot for slot in self._slots if slot.job is None]
        now = time.monotonic()
        while self._pending and idle:
            job = self._pending.popleft()
            if job.cancelled:
                self._release_locked(job)
                continue
            slot = _best_slot(idle, job.tokens)
            idle.remove(slot)
            # Its KV is set up, and its phase moves to PROMPT, in _start_prompt, outside the lock.
            job.slot = slot
            job.queue_seconds = now - job.submitted_at
            slot.job = job
            admitted.append(job)
        return admitted

    def _truncate(self, slot: _Slot, keep: int) -> None:
        if keep < len(slot.cached):
            self._kv.truncate(slot.seq_id, keep)
            del slot.cached[keep:]

    def _start_prompt(self, job: _Job) -> None:
        """Give the job's slot the largest prefix of its prompt that needs no evaluation."""
        slot = job.slot
        assert slot is not None
        job.phase = JobPhase.PROMPT
        holders = [
            Holder(other.seq_id, other.cached, _evaluating(other.job))
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
            self._truncate(slot, own)
            job.n_evaluated = own
            return
        reused = plan.tokens
        if plan.source in (ReuseSource.NONE, ReuseSource.SLOT):
            self._truncate(slot, reused)
        elif plan.source is ReuseSource.SHARED:
            reused = self._share(self._slots[plan.from_seq], slot, reused)
        else:
            reused = self._restore(slot, plan)
        job.n_evaluated = reused
        self._count_reuse(plan.source if reused else ReuseSource.NONE, reused)

    def _share(self, source: _Slot, slot: _Slot, tokens: int) -> int:
        """Give the slot the first `tokens` cells of another; returns how many it got."""
        if self._kv.share(source.seq_id, slot.seq_id, tokens):
            slot.cached = source.cached[:tokens]
            return tokens
        log.warning("llama.cpp refused to copy a prefix of %d tokens between slots", tokens)
        slot.cached = []
        return 0

    def _save(self, slot: _Slot) -> None:
        assert self._cache is not None
        if self._cache.worth_saving(slot.cached):
            self._cache.put(list(slot.cached), self._kv.save(slot.seq_id))

    def _restore(self, slot: _Slot, plan: ReusePlan) -> int:
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
        self._truncate(slot, plan.tokens)
        return plan.tokens

    def _resolve_awaited(self, active: list[_Job]) -> None:
        """Jobs waiting for a prefix another slot evaluates take it once it is there, or once
        that slot stopped evaluating it (then they take what it got to)."""
        for job in active:
            plan = job.awaited
            if plan is None:
                continue
            slot, source = job.slot, self._slots[plan.from_seq]
            assert slot is not None
            held = min(common_prefix(source.cached, job.tokens), plan.tokens)
            coming = _evaluating(source.job)
            if held < plan.tokens and coming and common_prefix(coming, job.tokens) >= plan.tokens:
                continue  # still on its way
            job.awaited = None
            if held > job.n_evaluated:
                job.n_evaluated = self._share(source, slot, held)
                self._count_reuse(ReuseSource.SHARED, job.n_evaluated)
            else:
                self._count_reuse(ReuseSource.SLOT, job.n_evaluated)

    def _count_reuse(self, source: ReuseSource, tokens: int) -> None:
        with self._lock:
            self._reused[source] += tokens

    def _drop_cancelled(self, events: EventBatch) -> None:
        for slot in self._slots:
            job = slot.job
            if job is not None and job.cancelled:
                self._end(job, events, Failed(detail="the request was cancelled"))

    def _step_once(self, events: EventBatch) -> None:
        active = [slot.job for slot in self._slots if slot.job is not None]
        if not active:
            return
        self._resolve_awaited(active)
        self._step += 1
        # A decode that fails is retried with half of its requests at a time, down to one: a
        # request whose own decode fails ends alone, and the others advance in this same step.
        groups = [active]
        while groups:
            group = groups.pop()
            step = self._fill_batch(group)
            if step.n_tokens == 0:
                continue  # every prompt here waits for a prefix another slot is evaluating
            self._hooks.decoding([job.id for job in step.jobs()])
            status = llama_cpp.llama_decode(self._context, self._batch)
            if status == 0:
                self._step_decoded(step, events)
                continue
            jobs = step.jobs()
            self._undo_decode(jobs)
            if len(jobs) <= 1:
                self._decode_failed(status, jobs, events)
            else:
                log.warning(
                    "llama_decode failed with status %d for %d requests; retrying them in "
                    "smaller batches",
                    status,
                    len(jobs),
                )
                half = len(jobs) // 2
                groups += [jobs[half:], jobs[:half]]

    def _step_decoded(self, step: _Step, events: EventBatch) -> None:
        produced = 0
        for job in self._record_decoded(step):
            sample = functools.partial(self._sample, job, events)
            produced += self._guarded(job, events, "choosing its next token", sample) or 0
        with self._lock:
            self._prompt_tokens_evaluated += step.prompt_tokens()
            self._completion_tokens_total += produced
            if produced:
                self._recent.append((time.monotonic(), produced))

    def _fill_batch(self, active: list[_Job]) -> _Step:
        """One token of every generating job, then chunks of prompts in the room left."""
        batch = self._batch
        step = _Step()
        for job in active:
            if job.phase is JobPhase.GENERATING:
                slot = job.slot
                assert slot is not None
                job.logits_index = step.n_tokens
                _put(batch, step.n_tokens, job.next_token, len(slot.cached), slot.seq_id, True)
                step.generating.append(job)
                step.n_tokens += 1
        budget = self.config.n_batch - step.n_tokens
        if step.generating:
            budget = min(budget, MIXED_PROMPT_BUDGET)
        for job in active:
            if job.phase is not JobPhase.PROMPT or job.awaited is not None or budget <= 0:
                continue
            take = self._put_prompt_chunk(job, step, budget)
            budget -= take
        batch.n_tokens = step.n_tokens
        return step

    def _put_prompt_chunk(self, job: _Job, step: _Step, budget: int) -> int:
        slot = job.slot
        assert slot is not None
        start = job.n_evaluated
        take = min(len(job.tokens) - start, budget, self._prompt_chunk)
        last = len(job.tokens) - 1
        for position in range(start, start + take):
            is_last = position == last
            if is_last:
                job.logits_index = step.n_tokens
            _put(self._batch, step.n_tokens, job.tokens[position], position, slot.seq_id, is_last)
            step.n_tokens += 1
        step.chunks.append((job, take))
        return take

    def _record_decoded(self, step: _Step) -> list[_Job]:
        """Note what each slot's KV now holds; returns the jobs whose logits are ready."""
        ready = list(step.generating)
        for job in step.generating:
            assert job.slot is not None
            job.slot.cached.append(job.next_token)
        for job, take in step.chunks:
            assert job.slot is not None
            job.slot.cached.extend(job.tokens[job.n_evaluated : job.n_evaluated + take])
            job.n_evaluated += take
            if job.logits_index is not None:
                ready.append(job)
        return ready

    def _guarded(
        self, job: _Job, events: EventBatch, doing: str, work: Callable[[], T]
    ) -> T | None:
        """`work()` for one request: whatever it raises ends that request alone (sampling,
        grammar, text, stop strings, log-probabilities), named in its Failed event."""
        try:
            return work()
        except Exception as exc:
            if job.phase is JobPhase.ENDED:
                log.exception("request %d failed after it ended, while %s", job.id, doing)
                return None
            if isinstance(exc, InvalidRequest):
                log.info("request %d ended while %s: %s", job.id, doing, exc)
                self._end(job, events, Failed(detail=str(exc), cause="request"))
            else:
                log.exception("request %d failed while %s", job.id, doing)
                detail = f"the engine failed while {doing} ({type(exc).__name__}: {exc})"
                self._end(job, events, Failed(detail=detail))
            return None

    def _sample(self, job: _Job, events: EventBatch) -> int:
        """Sample the job's next token; returns how many completion tokens it produced."""
        slot = job.slot
        assert slot is not None
        self._hooks.calling(Doing.SAMPLING, job.id)
        # Read before the sampler runs: the model's own logits, untouched by temperature,
        # penalties or grammar.
        index = job.logits_index
        assert index is not None
        job.logits_index = None
        distribution = (
            None
            if job.logprobs is None
            else read_distribution(self._context, index, self.model.n_vocab, job.logprobs)
        )
        token = job.sampler.sample(self._context, index)
        is_eog = self._eog.get(token)
        if is_eog is None:
            is_eog = self._eog[token] = self.model.is_end_of_generation(token)
        if is_eog:
            self._finish(job, events, "stop")
            return 0
        job.completion_tokens += 1
        if distribution is not None:
            job.pending_logprobs.append(distribution.entry(token, self.model.piece))
        text = job.utf8.feed(self.model.piece(token))
        if text:
            text, stopped = job.stops.feed(text)
            if text:
                self._emit_text(job, events, text)
            if stopped:
                self._finish(job, events, "stop")
                return 1
        if job.completion_tokens >= job.max_tokens:
            self._finish(job, events, "length")
        elif len(slot.cached) + 1 >= self.n_ctx:
            log.info(
                "request %d filled its slot's context of %d tokens; it ends with "
                "finish_reason=length (a larger --ctx gives requests more room)",
                job.id,
                self.n_ctx,
            )
            self._finish(job, events, "length")
        else:
            job.phase = JobPhase.GENERATING
            job.next_token = token
            self._hooks.produced(job.id, token, job.sampler.rng_draws, tuple(job.pending_logprobs))
        return 1

    def _undo_decode(self, jobs: list[_Job]) -> None:
        """Drop whatever a failed decode left in these jobs' KV: each slot holds exactly its
        `cached` tokens again, so the step can be retried."""
        for job in jobs:
            if job.slot is not None:
                slot = job.slot
                self._kv.truncate(slot.seq_id, len(slot.cached))
            job.logits_index = None

    def _decode_failed(self, status: int, jobs: list[_Job], events: EventBatch) -> None:
        detail = f"llama_decode failed with status {status}" + (
            " (no room for it in the KV cache)" if status == 1 else ""
        )
        log.error("%s; ending %d requests", detail, len(jobs))
        for job in jobs:
            slot = job.slot
            self._end(job, events, Failed(detail=detail))
            if slot is not None:
                self._truncate(slot, 0)

    def _finish(self, job: _Job, events: EventBatch, reason: FinishReason) -> None:
        # Text held back as a possible start of a stop string is output after all (once a
        # stop string matched, nothing is held).
        held = job.stops.flush()
        if held:
            self._emit_text(job, events, held)
        if job.parser is not None:
            events.extend((job.id, event) for event in job.parser.finish())
            if job.parser.calls and reason == "stop":
                reason = "tool_calls"
        usage = Usage(prompt_tokens=job.prompt_length, completion_tokens=job.completion_tokens)
        finished = Finished(
            finish_reason=reason,
            usage=usage,
            queue_seconds=job.queue_seconds,
            stop_sequence=job.stops.matched,
        )
        self._end(job, events, finished)

    def _emit_text(self, job: _Job, events: EventBatch, text: str) -> None:
        if job.parser is None:
            events.append((job.id, TextDelta(text=text, logprobs=job.take_logprobs())))
            return
        for event in job.parser.feed(text):
            if isinstance(event, TextDelta) and job.pending_logprobs:
                event = TextDelta(text=event.text, logprobs=job.take_logprobs())
            events.append((job.id, event))

    def _end(self, job: _Job, events: EventBatch, event: Event) -> None:
        events.append((job.id, event))
        job.phase = JobPhase.ENDED
        slot = job.slot
        if slot is not None:
            slot.job = None
            slot.last_used = self._step
            job.slot = None
        with self._lock:
            self._release_locked(job)
            self._requests_finished += 1

    def _release_locked(self, job: _Job) -> None:
        self._hooks.calling(Doing.RELEASING, job.id)
        job.sampler.close()
        self._jobs.pop(job.id, None)

    def _fail_active(self, events: EventBatch, detail: str) -> None:
        for slot in self._slots:
            if slot.job is not None:
                self._end(slot.job, events, Failed(detail=detail))
            self._truncate(slot, 0)


def open_batch_engine(
    path: Path,
    n_gpu_layers: int,
    config: EngineConfig,
    deliver: Deliver,
    hooks: EngineHooks | None = None,
) -> BatchEngine:
    """Load the model and start its engine; the model is freed if the engine cannot start."""
    model = LlamaModel(path, n_gpu_layers=n_gpu_layers)
    try:
        return BatchEngine(model, config, deliver, hooks)
    except BaseException:
        model.close()
        raise


class _Step:
    """What one decode holds: a token of each generating job and chunks of prompts."""

    __slots__ = ("chunks", "generating", "n_tokens")

    def __init__(self) -> None:
        self.generating: list[_Job] = []
        self.chunks: list[tuple[_Job, int]] = []  # (job, prompt tokens of it in this batch)
        self.n_tokens = 0

    def jobs(self) -> list[_Job]:
        return self.generating + [job for job, _ in self.chunks]

    def prompt_tokens(self) -> int:
        return sum(take for _, take in self.chunks)


def _best_slot(idle: list[_Slot], tokens: list[int]) -> _Slot:
    """The idle slot whose cache shares the longest prefix; among equals, the least used."""
    best, best_shared = idle[0], -1
    for slot in idle:
        shared = common_prefix(slot.cached, tokens)
        if shared > best_shared or (shared == best_shared and slot.last_used < best.last_used):
            best, best_shared = slot, shared
    return best


def _evaluating(job: _Job | None) -> list[int] | None:
    """The prompt a slot's job is evaluating now, if it evaluates one itself."""
    if job is None or job.phase is not JobPhase.PROMPT or job.awaited is not None:
        return None
    return job.tokens


def _open_prompt_cache(model: LlamaModel, config: EngineConfig) -> PromptCache | None:
    if config.prompt_cache_bytes <= 0:
        return None
    directory = Path(config.prompt_cache_dir) if config.prompt_cache_dir else None
    return PromptCache(
        config.prompt_cache_bytes,
        directory,
        model_sha256(model.path, directory) if directory is not None else None,
        build=f"llama-cpp-python {llama_cpp_version()}",
    )


def _put(batch: Any, index: int, token: int, position: int, seq_id: int, logits: bool) -> None:
    batch.token[index] = token
    batch.pos[index] = position
    batch.n_seq_id[index] = 1
    batch.seq_id[index][0] = seq_id
    batch.logits[index] = logits
