"""The batch engine in this process, with a sink that collects its events: for the engine
tier (tests/engine), which checks the engine itself without an HTTP server in between."""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from locallab_gguf.engine.runtime.scheduler import BatchEngine, open_batch_engine
from locallab_gguf.engine.runtime.speculation import Drafter
from locallab_gguf.engine.types import Event, EventBatch, Failed, Finished, GenerationRequest
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.serving.loader import engine_config
from locallab_gguf.settings import Settings


class CollectingSink:
    """The engine's `deliver` callback: keeps each request's events, and wakes who waits."""

    def __init__(self) -> None:
        self._events: dict[int, list[Event]] = collections.defaultdict(list)
        self._changed = threading.Condition()

    def __call__(self, batch: EventBatch) -> None:
        if not batch:
            return
        with self._changed:
            for job_id, event in batch:
                self._events[job_id].append(event)
            self._changed.notify_all()

    def events(self, job_id: int) -> list[Event]:
        with self._changed:
            return list(self._events[job_id])

    def wait_ended(self, job_id: int, timeout: float = 120.0) -> list[Event]:
        """The request's events once its last one (Finished or Failed) has come."""
        return self.wait_for(
            job_id,
            lambda events: bool(events) and isinstance(events[-1], Finished | Failed),
            timeout,
        )

    def wait_for(
        self, job_id: int, condition: Callable[[list[Event]], bool], timeout: float = 120.0
    ) -> list[Event]:
        """The request's events once `condition` holds for them."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._events[job_id]), timeout):
                raise TimeoutError(f"request {job_id}: no such events within {timeout:.0f} s")
            return list(self._events[job_id])


class EngineHarness:
    """Submit requests to an in-process BatchEngine and read their events."""

    def __init__(self, engine: BatchEngine, sink: CollectingSink) -> None:
        self.engine = engine
        self.sink = sink
        self._ids = itertools.count(1)

    def submit(self, request: GenerationRequest) -> int:
        job_id = next(self._ids)
        self.engine.submit(job_id, request)
        return job_id

    def run(self, request: GenerationRequest) -> list[Event]:
        """Every event of the request, once it has ended."""
        return self.sink.wait_ended(self.submit(request))


@contextlib.contextmanager
def running_engine(
    path: Path,
    spec: ModelSpec,
    settings: Settings,
    drafter: Drafter | None = None,
    draft_model: Path | None = None,
) -> Iterator[EngineHarness]:
    """The model at `path` in a BatchEngine configured as the server would configure it;
    `drafter` replaces the engine's own speculative drafts; `draft_model` drafts beside them."""
    sink = CollectingSink()
    config = engine_config(settings, spec)
    if draft_model is not None:
        config = msgspec.structs.replace(config, draft_model=str(draft_model))
    engine = open_batch_engine(path, 0, config, sink, drafter=drafter)
    try:
        yield EngineHarness(engine, sink)
    finally:
        engine.close(drain=False)
