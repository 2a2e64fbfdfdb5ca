"""A request's engine events, timed and counted for /metrics and the access log as they pass."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

from locallab_gguf.api.common.middleware.request_log import RequestRecord
from locallab_gguf.engine.client import RequestStream
from locallab_gguf.engine.types import Event, Failed, Finished, TextDelta
from locallab_gguf.serving.metrics import Metrics


class MeteredStream:
    """Has RequestStream's interface (`streaming.EventSource`); observes without buffering."""

    def __init__(
        self,
        stream: RequestStream,
        metrics: Metrics,
        model_id: str,
        submitted: float,
        record: RequestRecord | None,
        clock: Callable[[], float] = time.monotonic,
        on_end: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_end` runs once, when the stream finishes, fails or is cancelled."""
        self.prompt_tokens = stream.prompt_tokens
        self._stream = stream
        self._metrics = metrics
        self._model_id = model_id
        self._submitted = submitted
        self._record = record
        self._clock = clock
        self._first_text: float | None = None
        self._ended = False
        self._on_end = on_end
        metrics.record_accepted(model_id, stream.prompt_tokens)
        if record is not None:
            record.prompt_tokens += stream.prompt_tokens

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for event in self._stream:
            self._observe(event)
            yield event

    def drain_ready(self) -> list[Event]:
        events = self._stream.drain_ready()
        for event in events:
            self._observe(event)
        return events

    def cancel(self) -> None:
        self._stream.cancel()
        if not self._ended:
            self._ended = True
            self._metrics.record_unfinished(self._model_id, "cancelled")
        self._on_end()

    def __del__(self) -> None:
        # A response that never started (its client left first) still lets go of its model.
        with contextlib.suppress(RuntimeError):
            self._on_end()

    def _observe(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            if self._first_text is None and event.text:
                self._first_text = self._clock() - self._submitted
        elif isinstance(event, Finished):
            self._ended = True
            seconds = self._clock() - self._submitted
            self._metrics.record_finished(self._model_id, event, seconds, self._first_text)
            if self._record is not None:
                self._record.completion_tokens += event.usage.completion_tokens
            self._on_end()
        elif isinstance(event, Failed):
            self._ended = True
            self._metrics.record_unfinished(self._model_id, "failed")
            self._on_end()
