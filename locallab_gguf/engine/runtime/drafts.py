"""Which slots carry a draft into the next step, and where each draft comes from."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from locallab_gguf.engine.runtime.draft_model import DraftModel
from locallab_gguf.engine.runtime.grammar_drafts import GrammarProbe
from locallab_gguf.engine.runtime.job import Job, JobPhase
from locallab_gguf.engine.runtime.llama import LlamaModel
from locallab_gguf.engine.runtime.speculation import (
    Draft,
    Drafter,
    DraftSource,
    draft_budget,
    required_acceptance,
)

log = logging.getLogger(__name__)


class RequestDrafter:
    """The engine's own drafts: the text a request's grammar forces, else prompt lookup, else
    the draft model's guess when there is one.

    Prompt lookup goes before the draft model: a match costs a dictionary lookup and, when the
    answer is copying, is kept as often as a model's guess; the draft model costs a decode of
    its own per drafted token."""

    def __init__(self, model: LlamaModel, draft_model: DraftModel | None = None) -> None:
        self._model = model
        self._draft_model = draft_model
        self._probe: GrammarProbe | None = None  # made when a request first has a grammar

    def draft(self, job: Job, history: Sequence[int], most: int) -> Draft | None:
        drafting = job.drafting
        assert drafting is not None
        grammar = job.sampler.grammar
        allowed = drafting.allowance(most, DraftSource.GRAMMAR) if grammar is not None else 0
        if allowed:
            if self._probe is None:
                self._probe = GrammarProbe(self._model)
            previous = self._model.piece(history[-1]).decode("utf-8", errors="replace")
            forced = self._probe.forced_tokens(grammar, previous, allowed)
            if forced:
                return Draft(forced, DraftSource.GRAMMAR)
        if drafting.may_guess():
            allowed = drafting.allowance(most, DraftSource.NGRAM)
            if allowed:
                lookup = drafting.lookup
                lookup.sync(history)
                tokens = lookup.draft(allowed)
                if tokens:
                    return Draft(tokens, DraftSource.NGRAM)
        return self._guess(job, history, most)

    def _guess(self, job: Job, history: Sequence[int], most: int) -> Draft | None:
        assert job.drafting is not None and job.slot is not None
        if self._draft_model is None:
            return None
        allowed = job.drafting.allowance(most, DraftSource.MODEL)
        if not allowed:
            return None
        try:
            tokens = self._draft_model.draft(job.slot.seq_id, history, allowed)
        except RuntimeError as exc:  # a draft is an optimisation: the request goes on without
            log.warning("request %d: no draft this step: %s", job.id, exc)
            return None
        return Draft(tokens, DraftSource.MODEL) if tokens else None


def plan_drafts(
    jobs: Sequence[Job], drafter: Drafter, batch_room: int, n_ctx: int, extra_cost: float
) -> None:
    """Give each generating job that speculates the draft it carries into the next decode;
    `extra_cost`: what one more token in a decode costs here (draft_cost.py)."""
    generating = [job for job in jobs if job.phase is JobPhase.GENERATING]
    budget = draft_budget(len(generating), batch_room)
    required = required_acceptance(len(generating), extra_cost)
    for job in generating:
        job.draft = None
        drafting, slot = job.drafting, job.slot
        if drafting is None or slot is None:
            continue
        drafting.required = required
        # Tokens past max_tokens or the context would be thrown away: never drafted.
        most = min(
            drafting.length,
            budget,
            job.max_tokens - job.completion_tokens - 1,
            n_ctx - len(slot.cached) - 2,
        )
        if most <= 0:
            continue
        draft = drafter.draft(job, [*slot.cached, job.next_token], most)
        if draft is None or not draft.tokens:
            continue
        del draft.tokens[most:]
        job.draft = draft
        budget -= len(draft.tokens)
