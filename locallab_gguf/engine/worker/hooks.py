"""What the batching engine tells an observer as it works: the seam crash recovery hangs on.

The engine thread calls these around its native calls and after each token, so that a worker
process can note in shared memory what it is doing (activity.py) and report every request's
token ids to the server (resume.py). Run on a thread of the server, the engine needs none of
it and gets `NoHooks`.
"""

from __future__ import annotations

from typing import Protocol

from locallab_gguf.engine.types import TokenLogprobs
from locallab_gguf.engine.worker.activity import Doing


class EngineHooks(Protocol):
    def decoding(self, job_ids: list[int]) -> None:
        """Before `llama_decode` of a batch holding these jobs."""

    def calling(self, doing: Doing, job_id: int) -> None:
        """Before native calls made for one job: sampling it, preparing or releasing it."""

    def between_calls(self) -> None:
        """At the end of a step: what follows until the next note is Python only."""

    def produced(
        self, job_id: int, token: int, rng_draws: int, held_logprobs: tuple[TokenLogprobs, ...]
    ) -> None:
        """A job that goes on generating produced `token`. `rng_draws` counts the numbers its
        sampler's RNG has drawn so far; `held_logprobs` are the log-probabilities of its
        tokens whose text is still held back (part of a character, or of a possible stop
        string)."""


class NoHooks:
    def decoding(self, job_ids: list[int]) -> None:
        pass

    def calling(self, doing: Doing, job_id: int) -> None:
        pass

    def between_calls(self) -> None:
        pass

    def produced(
        self, job_id: int, token: int, rng_draws: int, held_logprobs: tuple[TokenLogprobs, ...]
    ) -> None:
        pass
