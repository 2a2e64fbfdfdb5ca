"""After a decode: each request's next token picked, and its draft checked, token by token.

Without a draft a request's sampler picks one token at its batch position. With one, the
draft's tokens sit at the positions after it, each with its logits: the sampler picks at each
position in turn, as it would have one step at a time, and the draft is kept while the picks
equal it (engine/runtime/acceptance.py says why that is the speculative-sampling rule). Every
picked token goes through the text pipeline before the next is looked at, so a stop string,
max_tokens, an end-of-generation token or a full context ends the request at exactly the token
it would have without speculation, and nothing after it is sent. The KV cells of the draft's
refused tail are removed before the next step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from locallab_gguf.engine.runtime.job import Job, JobPhase
from locallab_gguf.engine.runtime.llama import LlamaModel
from locallab_gguf.engine.runtime.logprobs import read_distribution
from locallab_gguf.engine.runtime.slot_reuse import SlotReuse
from locallab_gguf.engine.runtime.speculation import SpeculationCounters
from locallab_gguf.engine.types import EventBatch, FinishReason
from locallab_gguf.engine.worker.activity import Doing
from locallab_gguf.engine.worker.hooks import EngineHooks

log = logging.getLogger(__name__)

Finish = Callable[[Job, EventBatch, FinishReason], None]


class TokenPicker:
    """Picks the tokens of the requests a decode left logits for (on the engine thread)."""

    def __init__(
        self,
        context: Any,
        model: LlamaModel,
        n_ctx: int,
        reuse: SlotReuse,
        hooks: EngineHooks,
        finish: Finish,
        draft_max: int,
    ) -> None:
        self._context = context
        self._model = model
        self._n_ctx = n_ctx
        self._reuse = reuse
        self._hooks = hooks
        self._finish = finish
        self._draft_max = draft_max
        self._eog: dict[int, bool] = {}
        self.counters = SpeculationCounters()

    def pick(self, job: Job, events: EventBatch) -> int:
        """The job's next token(s); returns how many completion tokens it produced."""
        slot = job.slot
        assert slot is not None
        self._hooks.calling(Doing.SAMPLING, job.id)
        index = job.logits_index
        assert index is not None
        job.logits_index = None
        draft, job.draft = job.draft, None
        drafted = draft.tokens if draft is not None else []
        # The slot's KV holds the next token and the whole draft; what precedes them:
        before = len(slot.cached) - 1 - len(drafted)
        kept = 0
        completed = job.completion_tokens
        try:
            for offset in range(len(drafted) + 1):
                token = self._sample(job, index + offset)
                if not self._take(job, token, before + 1 + offset, events):
                    break
                if offset < len(drafted) and token == drafted[offset]:
                    kept += 1
                    continue
                job.phase = JobPhase.GENERATING
                job.next_token = token
                break
        finally:
            # The cells of the refused tail (or of a finished request's last drafted tokens)
            # go, so the slot holds exactly the tokens that were kept.
            if drafted:
                self._reuse.truncate(slot, before + 1 + kept)
                assert draft is not None and job.drafting is not None
                job.drafting.record(len(drafted), kept, self._draft_max, draft.source)
                self.counters.count(draft.source, len(drafted), kept)
        return job.completion_tokens - completed

    def _sample(self, job: Job, index: int) -> int:
        # Read before the sampler runs: the model's own logits, untouched by temperature,
        # penalties or grammar.
        if job.logprobs is not None:
            job.distribution = read_distribution(
                self._context, index, self._model.n_vocab, job.logprobs
            )
        return job.sampler.sample(self._context, index)

    def _take(self, job: Job, token: int, cached: int, events: EventBatch) -> bool:
        """One picked token through the text pipeline and the limits; whether the request
        goes on. `cached` is the slot's length before the token, as if decoded one by one."""
        is_eog = self._eog.get(token)
        if is_eog is None:
            is_eog = self._eog[token] = self._model.is_end_of_generation(token)
        if is_eog:
            self._finish(job, events, "stop")
            return False
        job.completion_tokens += 1
        distribution, job.distribution = job.distribution, None
        logprobs = None if distribution is None else distribution.entry(token, self._model.piece)
        if job.text.feed(self._model.piece(token), logprobs, events):
            self._finish(job, events, "stop")
            return False
        if job.completion_tokens >= job.max_tokens:
            self._finish(job, events, "length")
            return False
        if cached + 1 >= self._n_ctx:
            log.info(
                "request %d filled its slot's context of %d tokens; it ends with "
                "finish_reason=length (a larger --ctx gives requests more room)",
                job.id,
                self._n_ctx,
            )
            self._finish(job, events, "length")
            return False
        self._hooks.produced(job.id, token, job.sampler.rng_draws, tuple(job.text.pending_logprobs))
        return True
