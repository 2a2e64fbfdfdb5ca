"""The engine's hooks inside a worker process: activity notes for the server, token reports.

Also the crash hook the tests use: with LOCALLAB_GGUF_TEST_CRASH_MARKER set in its
environment, the worker kills itself with SIGSEGV while sampling any request whose prompt
contains that text, so a test can make one request crash the engine during its own sampling.
It is for tests only; never set it on a server that serves anyone.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
from collections.abc import Iterator

from locallab_gguf.engine.types import GenerationRequest, TokenLogprobs
from locallab_gguf.engine.worker.activity import ActivityBlock, Doing
from locallab_gguf.engine.worker.resume import Progress

CRASH_MARKER_ENV = "LOCALLAB_GGUF_TEST_CRASH_MARKER"
# Threads that take submissions: tokenizing a long prompt must not hold up cancellations.
SUBMIT_THREADS = 2
# Lane 0 is the engine thread's; each thread that takes submissions gets one of the others.
ENGINE_LANE = 0
ACTIVITY_LANES = 1 + SUBMIT_THREADS


class WorkerHooks:
    """EngineHooks that write the engine thread's notes and collect each step's tokens."""

    def __init__(self, block: ActivityBlock | None, crash_marker: str | None = None) -> None:
        self._block = block
        self._progress: list[Progress] = []
        self._crash_marker = crash_marker or None
        self._crash_jobs: set[int] = set()
        self._free_lanes: queue.SimpleQueue[int] = queue.SimpleQueue()
        for lane in range(1, block.lanes if block is not None else 1):
            self._free_lanes.put(lane)

    # -- EngineHooks, on the engine thread ---------------------------------------------

    def decoding(self, job_ids: list[int]) -> None:
        if self._block is not None:
            self._block.write(ENGINE_LANE, Doing.DECODING, job_ids)

    def calling(self, doing: Doing, job_id: int) -> None:
        if self._block is not None:
            self._block.write(ENGINE_LANE, doing, (job_id,))
        if doing is Doing.SAMPLING and job_id in self._crash_jobs:
            # To this thread: a signal sent to the process may be taken by another thread
            # while this one goes on and notes something else before the process is gone.
            signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)

    def between_calls(self) -> None:
        if self._block is not None:
            self._block.write(ENGINE_LANE, Doing.NOTHING)

    def produced(
        self, job_id: int, token: int, rng_draws: int, held_logprobs: tuple[TokenLogprobs, ...]
    ) -> None:
        self._progress.append(Progress(job_id, token, rng_draws, held_logprobs))

    def take_progress(self) -> list[Progress]:
        """The tokens produced since the last call (on the engine thread, after a step)."""
        progress, self._progress = self._progress, []
        return progress

    # -- submissions, on the submitting threads -----------------------------------------

    @contextlib.contextmanager
    def preparing(self, job_id: int, request: GenerationRequest) -> Iterator[None]:
        """Notes that this thread is preparing `job_id` (tokenizing it, compiling its grammar)."""
        if self._crash_marker is not None and self._crash_marker in _prompt_text(request):
            self._crash_jobs.add(job_id)
        if self._block is None:
            yield
            return
        lane = self._free_lanes.get()
        self._block.write(lane, Doing.PREPARING, (job_id,))
        try:
            yield
        finally:
            self._block.write(lane, Doing.NOTHING)
            self._free_lanes.put(lane)


def _prompt_text(request: GenerationRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    return "\n".join(message.content for message in request.messages or ())
