"""Speculative decoding: tokens guessed ahead for a slot, checked by the model in the shared step.

Each step a generating slot may carry, after its next token, a few drafted tokens that it
guesses will follow (engine/runtime/prompt_lookup.py copies them from the request's own text,
engine/runtime/grammar_drafts.py takes what its grammar forces). They go into the same
llama_decode as every other slot's token, each with its logits; the request's own sampler then
picks a token at each drafted position in turn (engine/runtime/verify.py), and the draft is kept
up to the first position where the pick differs from it. So a step yields between one token
(nothing kept: what it costs without speculation, plus the drafted positions' compute) and
draft + 1 tokens; the tokens are always the ones the model would have picked one by one.

A draft costs compute whether it is kept or not, so each slot's draft length follows its
recent acceptance, a slot whose drafts keep failing stops drafting for a while, and the step as
a whole drafts less as more slots generate (`draft_budget`).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from locallab_gguf.engine.runtime.prompt_lookup import PromptLookup
from locallab_gguf.engine.types import SpeculationStats

if TYPE_CHECKING:
    from locallab_gguf.engine.runtime.job import Job

# Drafting a slot's first guess this many tokens long; doubled while all of it is kept.
FIRST_DRAFT = 4
# After a draft of which nothing was kept, a slot skips drafting for 1, 2, 4 ... steps, up to
# this many: text that repeats nothing costs a failed draft now and then, not at every step.
MAX_PAUSE = 32
# Tokens of a step (the slots' own and their drafts) beyond which no slot drafts (draft_budget).
STEP_TOKENS = 40
# What one more token in a decode costs, as a share of a decode of one token, until the
# engine has measured it on its own model and device (engine/runtime/draft_cost.py): it differs
# by far between machines. benchmarks/draft_cost.py measured 0.44-0.67 (median about 0.5) with
# the default model on a 2-core AMD EPYC, where a small model's weights stay in the CPU's
# caches and a batch saves little; a GPU does a few more tokens nearly for free.
EXTRA_TOKEN_COST = 0.5
# A request whose drafts are kept too rarely to pay still drafts PROBE_LENGTH tokens every
# PROBE_EVERY steps, to notice when its text turns predictable.
PROBE_EVERY = 16
PROBE_LENGTH = 2
# How much each draft's outcome moves a request's acceptance estimate.
RATE_WEIGHT = 0.3


class DraftSource(enum.Enum):
    """Where a drafted token came from (counted apart in the stats)."""

    NGRAM = "ngram"  # prompt lookup: the request's own prompt and output
    GRAMMAR = "grammar"  # the text its grammar forces
    MODEL = "model"  # the greedy guesses of a smaller model (--draft-model)
    TEST = "test"  # a drafter a test injects


# The sources whose failed drafts pause prompt lookup (DraftState.may_guess).
PAUSING = frozenset({DraftSource.NGRAM, DraftSource.TEST})


class Draft:
    __slots__ = ("source", "tokens")

    def __init__(self, tokens: list[int], source: DraftSource) -> None:
        self.tokens = tokens
        self.source = source


class Drafter(Protocol):
    """Proposes the tokens likely to follow `history` (the slot's tokens, the next one last)."""

    def draft(self, job: Job, history: Sequence[int], most: int) -> Draft | None: ...


class DraftState:
    """One request's drafting state: how long its next draft may be, the pause of its prompt
    lookup, and the index of its text for prompt lookup.

    Only prompt lookup pauses: a grammar's forced text costs one look at the grammar to find and
    is nearly always kept, so failed lookups inside a JSON value never hold back its next key;
    a draft model is held back by its own acceptance estimate alone."""

    __slots__ = (
        "length",
        "lookup",
        "pause_next",
        "paused",
        "rates",
        "required",
        "since_probe",
    )

    def __init__(self, draft_max: int) -> None:
        self.lookup = PromptLookup()
        self.length = min(FIRST_DRAFT, draft_max)
        self.paused = 0  # steps left without prompt lookup
        self.pause_next = 1
        # Estimates of the share of drafted tokens kept, by source; a grammar's forced text is
        # nearly always kept.
        self.rates = {
            DraftSource.GRAMMAR: 0.9,
            DraftSource.NGRAM: 0.6,
            DraftSource.MODEL: 0.6,
            DraftSource.TEST: 0.6,
        }
        self.required = 0.0  # the acceptance drafts need this step (required_acceptance)
        self.since_probe = 0

    def allowance(self, most: int, source: DraftSource) -> int:
        """Tokens a draft from this source may have this step: `most` while its acceptance
        pays for the step's size, a short probe now and then, else none."""
        if self.rates[source] >= self.required:
            return most
        self.since_probe += 1
        if self.since_probe < PROBE_EVERY:
            return 0
        self.since_probe = 0
        return min(most, PROBE_LENGTH)

    def may_guess(self) -> bool:
        """Whether prompt lookup may draft this step (not while paused)."""
        if self.paused:
            self.paused -= 1
            return False
        return True

    def record(self, drafted: int, kept: int, draft_max: int, source: DraftSource) -> None:
        """A draft's outcome: the next draft's length, the source's acceptance estimate, and
        for prompt lookup (and a test's drafter) a pause after a draft nothing of was kept."""
        if kept == drafted:
            self.length = min(draft_max, 2 * self.length)
        else:
            self.length = max(1, kept + 1)
        share = kept / drafted if drafted else 0.0
        self.rates[source] += RATE_WEIGHT * (share - self.rates[source])
        if source not in PAUSING:
            return
        if kept == 0:
            self.paused = self.pause_next
            self.pause_next = min(MAX_PAUSE, 2 * self.pause_next)
        else:
            self.pause_next = 1


def required_acceptance(generating: int, extra_cost: float = EXTRA_TOKEN_COST) -> float:
    """The share of drafted tokens that must be kept for drafts to pay, with `generating`
    slots in the step.

    A step of N slots' tokens costs about 1 + (N - 1) k one-token decodes (k: `extra_cost`,
    what one more token in a decode costs) and yields N tokens, so a kept drafted token saves
    (1 + (N - 1) k) / N of a decode while every drafted token costs k: drafts pay above
    N k / (1 + (N - 1) k); with k = 0.5, 0.5 for one slot, 0.8 for four, 0.89 for eight.
    benchmarks/speculative.py measured eight clients copying their prompts, 76 % of their
    drafts kept, at 0.65 x the speed without drafts before any bar, and 8 stories (62 % kept)
    at 0.31 x.
    """
    n = max(1, generating)
    return n * extra_cost / (1 + (n - 1) * extra_cost)


def draft_budget(generating: int, batch_room: int) -> int:
    """Drafted tokens the step may carry, given how many slots generate.

    A decode's cost grows little with its tokens while they are few (the weights are read once
    for all of them) and in proportion once they are many: drafts fill a step up to
    STEP_TOKENS, so one slot drafts up to --draft-max tokens and eight slots about 4 each
    (their own tokens already take part of the cheap room). benchmarks/speculative.py
    measures one and eight clients.
    """
    return max(0, min(batch_room, STEP_TOKENS) - generating)


class SpeculationCounters:
    """Drafted and kept tokens by source, read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drafted = dict.fromkeys(DraftSource, 0)
        self._kept = dict.fromkeys(DraftSource, 0)

    def count(self, source: DraftSource, drafted: int, kept: int) -> None:
        with self._lock:
            self._drafted[source] += drafted
            self._kept[source] += kept

    def stats(self, extra_token_cost: float) -> SpeculationStats:
        with self._lock:
            return SpeculationStats(
                extra_token_cost=extra_token_cost,
                ngram_drafted=self._drafted[DraftSource.NGRAM],
                ngram_accepted=self._kept[DraftSource.NGRAM],
                grammar_drafted=self._drafted[DraftSource.GRAMMAR],
                grammar_accepted=self._kept[DraftSource.GRAMMAR],
                model_drafted=self._drafted[DraftSource.MODEL],
                model_accepted=self._kept[DraftSource.MODEL],
            )
