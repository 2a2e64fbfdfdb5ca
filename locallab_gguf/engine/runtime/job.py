"""One request in the batch engine: its phase, its slot, and its text pipeline.

The pipeline turns the bytes of each sampled token into the request's events: UTF-8 (a
character split across tokens is held until whole) -> stop strings (text that may start one is
held back) -> the tool-call parser, when the chat asked for one -> log-probabilities, handed out
with the text they belong to. It needs no llama context: feed it token pieces, read events.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from locallab_gguf.engine.runtime.text import StopMatcher, Utf8Stream
from locallab_gguf.engine.tools.parser import OutputParser
from locallab_gguf.engine.types import (
    EventBatch,
    Finished,
    FinishReason,
    TextDelta,
    TokenLogprobs,
    Usage,
)

if TYPE_CHECKING:
    from locallab_gguf.engine.runtime.kv import ReusePlan
    from locallab_gguf.engine.runtime.logprobs import StepDistribution
    from locallab_gguf.engine.runtime.sampling import Sampler
    from locallab_gguf.engine.runtime.speculation import Draft, DraftState


class TextPipeline:
    """A request's output text on its way to events (the module's docstring says how)."""

    __slots__ = ("job_id", "parser", "pending_logprobs", "reasoning_tokens", "stops", "utf8")

    def __init__(self, job_id: int, stops: StopMatcher, parser: OutputParser | None) -> None:
        self.job_id = job_id
        self.stops = stops
        self.parser = parser  # reads calls and thinking out of the text, when the chat asks
        self.utf8 = Utf8Stream()
        self.pending_logprobs: list[TokenLogprobs] = []  # tokens whose text is not out yet
        self.reasoning_tokens = 0  # tokens fed while the parser read thinking

    def replay(self, pieces: Iterable[bytes]) -> None:
        """Feed again the pieces of tokens whose text went out before the engine process that
        served them died: this restores what the UTF-8 decoder, the stop-string matcher and the
        parser held back, so nothing is repeated or lost. Emits nothing."""
        for piece in pieces:
            text = self.utf8.feed(piece)
            if text:
                safe, _ = self.stops.feed(text)
                if safe and self.parser is not None:
                    self.parser.feed(safe)  # its events went out before the crash

    def feed(self, piece: bytes, logprobs: TokenLogprobs | None, events: EventBatch) -> bool:
        """One sampled token's piece (and its log-probabilities, if asked for); appends the
        events it completes and returns whether a stop string was reached."""
        if logprobs is not None:
            self.pending_logprobs.append(logprobs)
        text = self.utf8.feed(piece)
        stopped = False
        if text:
            text, stopped = self.stops.feed(text)
            if text:
                self._emit(text, events)
        if self.parser is not None and self.parser.thinking:
            self.reasoning_tokens += 1
        return stopped

    def finish(self, reason: FinishReason, events: EventBatch) -> FinishReason:
        """Flush what is held back; returns the reason, `tool_calls` where the model stopped
        after calling tools."""
        # Text held back as a possible start of a stop string is output after all (once a
        # stop string matched, nothing is held).
        held = self.stops.flush()
        if held:
            self._emit(held, events)
        if self.parser is not None:
            events.extend((self.job_id, event) for event in self.parser.finish())
            if self.parser.calls and reason == "stop":
                return "tool_calls"
        return reason

    def take_logprobs(self) -> tuple[TokenLogprobs, ...]:
        if not self.pending_logprobs:
            return ()
        taken = tuple(self.pending_logprobs)
        self.pending_logprobs.clear()
        return taken

    def _emit(self, text: str, events: EventBatch) -> None:
        if self.parser is None:
            events.append((self.job_id, TextDelta(text=text, logprobs=self.take_logprobs())))
            return
        for event in self.parser.feed(text):
            if isinstance(event, TextDelta) and self.pending_logprobs:
                event = TextDelta(text=event.text, logprobs=self.take_logprobs())
            events.append((self.job_id, event))


class Slot:
    """One KV sequence and the job it serves, if any."""

    __slots__ = ("cache_key", "cached", "job", "last_used", "seq_id")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []  # tokens whose KV this sequence holds, from position 0
        self.cache_key: str | None = None  # the named conversation `cached` belongs to
        self.job: Job | None = None
        self.last_used = 0


class JobPhase(enum.Enum):
    """Where a request is in its life, as llama.cpp's server names a slot's state."""

    QUEUED = "queued"  # waiting for a free slot, or given one and not yet started
    PROMPT = "prompt"  # in a slot, its prompt evaluated a chunk per step
    GENERATING = "generating"  # its last sampled token waits to be decoded
    ENDED = "ended"  # finished, failed or cancelled; the slot is free again


class Job:
    __slots__ = (
        "awaited",
        "cache_key",
        "cached_tokens",
        "cancelled",
        "completion_tokens",
        "distribution",
        "draft",
        "drafting",
        "id",
        "logits_index",
        "logprobs",
        "max_tokens",
        "n_evaluated",
        "next_token",
        "phase",
        "prompt_length",
        "queue_seconds",
        "sampler",
        "slot",
        "submitted_at",
        "text",
        "tokens",
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
        cache_key: str | None = None,
    ) -> None:
        self.id = job_id
        self.cache_key = cache_key
        self.text = TextPipeline(job_id, stops, parser)
        self.tokens = tokens
        self.prompt_length = len(tokens)  # a resumed job's tokens also hold its completion
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.phase = JobPhase.QUEUED
        self.slot: Slot | None = None
        self.n_evaluated = 0  # prompt tokens already in the slot's KV
        self.cached_tokens = 0  # of those, the ones it found there (reused, not evaluated)
        # PROMPT: a prefix another slot is evaluating now, taken from it once it is there
        self.awaited: ReusePlan | None = None
        self.next_token = 0  # GENERATING: the sampled token the next step decodes
        self.logits_index: int | None = None  # where its logits are in the step's batch
        # GENERATING: tokens guessed to follow next_token, decoded with it and then checked
        self.draft: Draft | None = None
        self.drafting: DraftState | None = None  # None: this request is not speculated
        self.distribution: StepDistribution | None = None  # logits of the token being picked
        self.completion_tokens = 0
        self.cancelled = False
        self.logprobs = logprobs  # None, or how many alternatives each token reports
        self.submitted_at = time.monotonic()
        self.queue_seconds = 0.0

    def finished(self, reason: FinishReason, events: EventBatch) -> Finished:
        """The job's last event, once its held text and parser events are out."""
        reason = self.text.finish(reason, events)
        usage = Usage(
            prompt_tokens=self.prompt_length,
            completion_tokens=self.completion_tokens,
            cached_tokens=min(self.cached_tokens, self.prompt_length),
            reasoning_tokens=self.text.reasoning_tokens,
        )
        return Finished(
            finish_reason=reason,
            usage=usage,
            queue_seconds=self.queue_seconds,
            stop_sequence=self.text.stops.matched,
        )


def evaluating(job: Job | None) -> list[int] | None:
    """The prompt a slot's job is evaluating now, if it evaluates one itself."""
    if job is None or job.phase is not JobPhase.PROMPT or job.awaited is not None:
        return None
    return job.tokens
