"""Continuous batching: every active request advances by one token per llama_decode.

One thread owns the llama.cpp context. Each step it gathers the next token of every
generating slot, fills the rest of the batch with chunks of waiting prompts, decodes once,
and samples each slot at its own batch position with that request's own sampler.

Each slot is one KV sequence, by default in a stream of its own (engine/types.py's KvLayout).
By default a prompt advances in chunks as large as the batch; its prefix can come from any
slot that holds it, or from a prompt being evaluated right now (engine/runtime/kv.py), and saved
prompt states come back from the prompt cache (engine/runtime/prompt_cache.py). In the deterministic
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
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import llama_cpp

from locallab_gguf.engine.encode.chat_encoder import ChatEncoder
from locallab_gguf.engine.runtime.admission import Admission
from locallab_gguf.engine.runtime.draft_cost import engine_extra_token_cost
from locallab_gguf.engine.runtime.draft_model import DraftChoice, open_draft_model
from locallab_gguf.engine.runtime.drafts import RequestDrafter, plan_drafts
from locallab_gguf.engine.runtime.job import Job, JobPhase, Slot
from locallab_gguf.engine.runtime.kv import KvPool
from locallab_gguf.engine.runtime.llama import LlamaModel, create_context
from locallab_gguf.engine.runtime.slot_reuse import SlotReuse, best_slot, open_prompt_cache
from locallab_gguf.engine.runtime.speculation import Drafter
from locallab_gguf.engine.runtime.step import Step, fill_batch, prompt_chunk
from locallab_gguf.engine.runtime.verify import TokenPicker
from locallab_gguf.engine.types import (
    Accepted,
    EngineConfig,
    EngineInfo,
    EngineStats,
    Event,
    EventBatch,
    Failed,
    FinishReason,
    GenerationRequest,
    KvLayout,
)
from locallab_gguf.engine.worker.activity import Doing
from locallab_gguf.engine.worker.hooks import EngineHooks, NoHooks
from locallab_gguf.engine.worker.resume import Resume
from locallab_gguf.errors import (
    EngineFailure,
    InvalidRequest,
    Overloaded,
)

log = logging.getLogger(__name__)

Deliver = Callable[[EventBatch], None]
T = TypeVar("T")

THROUGHPUT_WINDOW_S = 10.0


class BatchEngine:
    def __init__(
        self,
        model: LlamaModel,
        config: EngineConfig,
        deliver: Deliver,
        hooks: EngineHooks | None = None,
        drafter: Drafter | None = None,
        draft: DraftChoice | None = None,
    ) -> None:
        draft = draft or DraftChoice(None)
        self.model = model
        self.config = config
        self._deliver = deliver
        self._hooks: EngineHooks = hooks or NoHooks()
        self._admission = Admission(model, config)
        unified = config.kv_layout is KvLayout.UNIFIED
        self._context = create_context(
            model, config, config.context_per_slot(model.n_ctx_train), unified
        )
        # llama.cpp may round the size up; what it reports is what each slot really has. A
        # unified pool reports its whole size: each request still gets one slot's share, so
        # the pool can never run out of cells, however the slots' prefixes are shared.
        self.n_ctx = int(
            llama_cpp.llama_n_ctx(self._context) // config.n_parallel
            if unified
            else llama_cpp.llama_n_ctx_seq(self._context)
        )
        self._kv = KvPool(self._context, unified)
        self._prompt_chunk = prompt_chunk(config)
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        # Measured before any request: whether drafts pay depends on it (draft_cost.py).
        self._extra_token_cost = engine_extra_token_cost(
            self._context, model, self._batch, config, self.n_ctx
        )
        self.info = EngineInfo(
            context_length=self.n_ctx,
            trained_context_length=model.n_ctx_train,
            n_layer=model.n_layer,
            n_gpu_layers=model.n_gpu_layers,
            model_size_bytes=model.size_bytes,
            chat_template_source=self._admission.template_source,
            parallel=config.n_parallel,
            n_vocab=model.n_vocab,
            kv_shape=(self.n_ctx, config.n_parallel),
            cache_type_k=config.cache_type_k,
            cache_type_v=config.cache_type_v,
            flash_attn=config.effective_flash_attn,
            rpc=config.rpc,
            draft_model=draft.model.info.file if draft.model is not None else None,
            draft_model_refused=draft.refused,
        )
        self._slots = [Slot(seq_id) for seq_id in range(config.n_parallel)]
        self._reuse = SlotReuse(self._kv, self._slots, open_prompt_cache(model, config))
        # Embeddings from this model, in a context of their own opened on first use.
        self.encoder = ChatEncoder(model, config)
        self._step = 0
        self._draft_model = draft.model  # closed with the engine
        self._drafter: Drafter = drafter or RequestDrafter(model, draft.model)
        self._picker = TokenPicker(
            self._context,
            model,
            self.n_ctx,
            self._reuse,
            self._hooks,
            self._finish,
            config.draft_max,
        )

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: collections.deque[Job] = collections.deque()
        self._jobs: dict[int, Job] = {}  # every job that is waiting or active
        self._accepting = True
        self._stopping = False

        self._prompt_tokens_total = 0
        self._prompt_tokens_evaluated = 0
        self._completion_tokens_total = 0
        self._requests_finished = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="locallab-engine", daemon=True)
        self._thread.start()

    # -- called from any thread -------------------------------------------------------------

    def submit(
        self, job_id: int, request: GenerationRequest, resume: Resume | None = None
    ) -> Accepted:
        """Tokenize and check the request, then queue it; raises when it cannot be served.

        With `resume`, the request continues from the tokens it produced before the engine
        process that served it died: they are evaluated after its prompt."""
        job = self._admission.job(job_id, request, resume, self.n_ctx)
        tokens, sampler = job.tokens, job.sampler
        with self._lock:
            refusal = self._refusal_locked()
            if refusal is not None:
                sampler.close()
                raise refusal
            self._pending.append(job)
            self._jobs[job_id] = job
            self._prompt_tokens_total += len(tokens)
            self._wake.notify()
        return Accepted(prompt_tokens=job.prompt_length)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """The request's prompt length in tokens, as `submit` would count it; queues nothing."""
        return len(self._admission.prepare(request).tokens)

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
                prompt_reuse=self._reuse.stats(),
                speculation=self._picker.counters.stats(self._extra_token_cost),
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
        self._reuse.close()
        self.encoder.close(drain)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._context)
        if self._draft_model is not None:
            self._draft_model.close()
        self.model.close()

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
            settled = self._reuse.settle()
            with self._lock:
                # An idle engine whose cache gave room to another model's still reports.
                while not self._jobs and not self._stopping and not settled:
                    settled = self._reuse.wait_idle(self._wake)
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
                        self._reuse.start_prompt(job)
                self._drop_cancelled(events)
                self._step_once(events)
            except Exception as exc:  # a bug outside any one request must not hang them all
                log.exception("engine step failed")
                self._fail_active(events, f"the engine failed: {exc}")
            self._hooks.between_calls()
            # Every step reports, even without events: a worker process sends its stats along.
            self._deliver(events)

    def _admit_locked(self) -> list[Job]:
        admitted: list[Job] = []
        idle = [slot for slot in self._slots if slot.job is None]
        now = time.monotonic()
        while self._pending and idle:
            job = self._pending.popleft()
            if job.cancelled:
                self._release_locked(job)
                continue
            slot = best_slot(idle, job.tokens, job.cache_key)
            idle.remove(slot)
            # Its KV is set up, and its phase moves to PROMPT, in _start_prompt, outside the lock.
            job.slot = slot
            job.queue_seconds = now - job.submitted_at
            slot.job = job
            admitted.append(job)
        return admitted

    def _drop_cancelled(self, events: EventBatch) -> None:
        for slot in self._slots:
            job = slot.job
            if job is not None and job.cancelled:
                self._end(job, events, Failed(detail="the request was cancelled"))

    def _step_once(self, events: EventBatch) -> None:
        active = [slot.job for slot in self._slots if slot.job is not None]
        if not active:
            return
        self._reuse.resolve_awaited(active)
        self._step += 1
        plan_drafts(active, self._drafter, self.config.n_batch, self.n_ctx, self._extra_token_cost)
        # A decode that fails is retried with half of its requests at a time, down to one: a
        # request whose own decode fails ends alone, and the others advance in this same step.
        groups = [active]
        while groups:
            group = groups.pop()
            step = fill_batch(self._batch, group, self.config.n_batch, self._prompt_chunk)
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

    def _step_decoded(self, step: Step, events: EventBatch) -> None:
        produced = 0
        for job in step.record_decoded():
            sample = functools.partial(self._picker.pick, job, events)
            produced += self._guarded(job, events, "choosing its next token", sample) or 0
        with self._lock:
            self._prompt_tokens_evaluated += step.prompt_tokens()
            self._completion_tokens_total += produced
            if produced:
                self._recent.append((time.monotonic(), produced))

    def _guarded(self, job: Job, events: EventBatch, doing: str, work: Callable[[], T]) -> T | None:
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

    def _undo_decode(self, jobs: list[Job]) -> None:
        """Drop whatever a failed decode left in these jobs' KV: each slot holds exactly its
        `cached` tokens again, so the step can be retried."""
        for job in jobs:
            if job.slot is not None:
                slot = job.slot
                self._kv.truncate(slot.seq_id, len(slot.cached))
            job.logits_index = None

    def _decode_failed(self, status: int, jobs: list[Job], events: EventBatch) -> None:
        detail = f"llama_decode failed with status {status}" + (
            " (no room for it in the KV cache)" if status == 1 else ""
        )
        log.error("%s; ending %d requests", detail, len(jobs))
        for job in jobs:
            slot = job.slot
            self._end(job, events, Failed(detail=detail))
            if slot is not None:
                self._reuse.truncate(slot, 0)

    def _finish(self, job: Job, events: EventBatch, reason: FinishReason) -> None:
        self._end(job, events, job.finished(reason, events))

    def _end(self, job: Job, events: EventBatch, event: Event) -> None:
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

    def _release_locked(self, job: Job) -> None:
        self._hooks.calling(Doing.RELEASING, job.id)
        job.sampler.close()
        self._jobs.pop(job.id, None)

    def _fail_active(self, events: EventBatch, detail: str) -> None:
        for slot in self._slots:
            if slot.job is not None:
                self._end(slot.job, events, Failed(detail=detail))
            self._reuse.truncate(slot, 0)


def open_batch_engine(
    path: Path,
    n_gpu_layers: int,
    config: EngineConfig,
    deliver: Deliver,
    hooks: EngineHooks | None = None,
    drafter: Drafter | None = None,
) -> BatchEngine:
    """Load the model (and its draft model) and start its engine; what was loaded is freed if
    the engine cannot start."""
    model = LlamaModel(path, n_gpu_layers=n_gpu_layers, rpc=config.rpc)
    draft = DraftChoice(None)
    try:
        draft = open_draft_model(model, config)
        return BatchEngine(model, config, deliver, hooks, drafter, draft)
    except BaseException:
        if draft.model is not None:
            draft.model.close()
        model.close()
        raise
