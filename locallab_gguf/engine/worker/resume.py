"""A crash loses nothing it did not cause: requests resumed on a new engine process.

The server keeps, for each request it sent to the worker, the request and the token ids it has
produced so far (the worker reports them with each step's events, in `Progress`). When the
worker dies, its activity notes (activity.py) say what it was doing:

- in a native call for one request (sampling it, compiling its grammar...): that request
  caused the crash; it ends with an error naming it;
- in a `llama_decode`: every request in the batch is a suspect; one that is a suspect for the
  second time ends the same way;
- anything else (Python code, waiting, a note torn by the kill): nobody is blamed.

Every other request is submitted again to the new worker with a `Resume`: the prompt is
evaluated with the produced tokens after it, the sampler is brought to the same state (grammar
advanced, seeded RNG advanced by as many draws), and the text those tokens already gave is fed
through the UTF-8 decoder and the stop-string matcher again without being sent, so the stream
goes on exactly where it stopped.
"""

from __future__ import annotations

import msgspec

from locallab_gguf.engine.types import GenerationRequest, TokenLogprobs
from locallab_gguf.engine.worker.activity import Doing, Note

# A request in the batch of this many crashed decodes is taken to be their cause.
MAX_SUSPICIONS = 2


class Resume(msgspec.Struct, frozen=True, kw_only=True):
    """What a request had produced when the engine process serving it died."""

    completion_tokens: tuple[int, ...] = ()
    rng_draws: int = 0  # numbers its sampler's RNG had drawn
    # Log-probabilities of its last tokens whose text was still held back.
    held_logprobs: tuple[TokenLogprobs, ...] = ()


class Progress(msgspec.Struct, frozen=True, array_like=True):
    """The token a job produced in one step (sent only for jobs that go on generating)."""

    job_id: int
    token: int
    rng_draws: int
    held_logprobs: tuple[TokenLogprobs, ...] = ()


class InFlightJob:
    """One request the worker is serving, as the server knows it."""

    __slots__ = ("completion", "held_logprobs", "request", "rng_draws", "suspicions")

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.completion: list[int] = []
        self.rng_draws = 0
        self.held_logprobs: tuple[TokenLogprobs, ...] = ()
        self.suspicions = 0

    def resume(self) -> Resume:
        return Resume(
            completion_tokens=tuple(self.completion),
            rng_draws=self.rng_draws,
            held_logprobs=self.held_logprobs,
        )


class CrashVerdict(msgspec.Struct, frozen=True):
    resumed: list[int]  # job ids, oldest first
    ended: dict[int, str]  # job id -> why it was ended


class InFlightJobs:
    """Every request sent to the worker that has not ended, with what it has produced."""

    def __init__(self) -> None:
        self._jobs: dict[int, InFlightJob] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job_id: int, request: GenerationRequest) -> None:
        self._jobs[job_id] = InFlightJob(request)

    def get(self, job_id: int) -> InFlightJob | None:
        return self._jobs.get(job_id)

    def forget(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)

    def record(self, progress: list[Progress]) -> None:
        jobs = self._jobs
        for step in progress:
            job = jobs.get(step.job_id)
            if job is not None:
                job.completion.append(step.token)
                job.rng_draws = step.rng_draws
                job.held_logprobs = step.held_logprobs

    def ids(self) -> list[int]:
        """Oldest first: ids grow with each request."""
        return sorted(self._jobs)

    def take_all(self) -> list[int]:
        """Forget every job; returns their ids."""
        ids = list(self._jobs)
        self._jobs.clear()
        return ids

    def judge_crash(self, reason: str, notes: list[Note], blame: bool = True) -> CrashVerdict:
        """Which jobs caused the crash (they are forgotten) and which are resumed. Without
        `blame` (the cause is known to lie outside the requests: an RPC worker was lost),
        every job is resumed and none is suspected."""
        ended: dict[int, str] = {}
        for note in notes if blame else []:
            if note.doing is Doing.DECODING:
                for job_id in note.job_ids:
                    job = self._jobs.get(job_id)
                    if job is None:
                        continue
                    job.suspicions += 1
                    if job.suspicions >= MAX_SUSPICIONS:
                        ended[job_id] = (
                            f"{reason} while {note.doing.describe()}, the second crash in "
                            "this request's batches; it was ended as their likely cause "
                            "(the other requests were resumed). Retry it, or change it if "
                            "it fails again."
                        )
            elif note.doing in (Doing.PREPARING, Doing.SAMPLING, Doing.RELEASING):
                for job_id in note.job_ids:
                    if job_id in self._jobs:
                        ended[job_id] = (
                            f"{reason} while {note.doing.describe()}; the request was "
                            "ended (the other requests were resumed). Retry it, or change "
                            "it if it fails again."
                        )
        for job_id in ended:
            del self._jobs[job_id]
        return CrashVerdict(resumed=sorted(self._jobs), ended=ended)
