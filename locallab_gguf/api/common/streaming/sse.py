"""Engine events -> HTTP bodies: a whole answer, or server-sent events as they come."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgspec
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.types import Receive

from locallab_gguf.engine.types import Event, Failed, Finished, TextDelta
from locallab_gguf.errors import ClientDisconnected, EngineFailure, InvalidRequest

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class EventSource(Protocol):
    """The events of one request: an engine's RequestStream, or one observed on its way."""

    prompt_tokens: int

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def drain_ready(self) -> list[Event]: ...

    def cancel(self) -> None: ...


async def collect(stream: EventSource) -> tuple[str, Finished]:
    """The whole text and how it finished; a failure inside the engine raises."""
    deltas, finished = await collect_deltas(stream)
    return "".join(delta.text for delta in deltas), finished


async def collect_deltas(stream: EventSource) -> tuple[list[TextDelta], Finished]:
    """Every text delta (with its log-probabilities) and how it finished; a failure raises."""
    events, finished = await collect_events(stream)
    return [event for event in events if isinstance(event, TextDelta)], finished


async def collect_events(
    stream: EventSource, seen: Callable[[], None] | None = None
) -> tuple[list[Event], Finished]:
    """Every event before the end, and how it finished; a failure raises. `seen` is called
    at each event (Ollama times the first one)."""
    events: list[Event] = []
    try:
        async for event in stream:
            if seen is not None:
                seen()
            if isinstance(event, Finished):
                return events, event
            if isinstance(event, Failed):
                if event.cause == "request":
                    raise InvalidRequest(event.detail)
                raise EngineFailure(f"generation failed: {event.detail}")
            events.append(event)
    finally:
        stream.cancel()  # cancelled from outside (client gone, shutdown): free the slot
    raise EngineFailure("generation ended without finishing")


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client hangs up first.

    Litestar does not cancel a handler whose client has gone; without this, a generation
    would run on for nobody until its token budget is spent.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_hang_up(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise ClientDisconnected()
        return task.result()
    finally:
        for pending in (task, watcher):
            pending.cancel()


async def _hang_up(receive: Receive) -> None:
    # The body has been read, so the next message can only be the client going away.
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(Stream):
    """A streamed response: text/event-stream unless told otherwise (Ollama's NDJSON).

    Litestar 2.25 lets a handler's JSON media type override the one a Stream names, so a
    handler that answers either JSON or a stream must pin the stream's own.
    """

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str = "text/event-stream") -> None:
        super().__init__(chunks, media_type=media_type, headers=SSE_HEADERS)

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        kwargs["media_type"] = self.media_type
        return super().to_asgi_response(*args, **kwargs)


def sse_event(data: str) -> bytes:
    """One event; a newline in the data becomes several data lines, as the SSE spec says."""
    return ("".join(f"data: {line}\n" for line in _LINE_BREAK.split(data)) + "\n").encode()


def json_event(body: msgspec.Struct) -> bytes:
    """One event whose data is a JSON body (JSON has no raw newlines: one data line)."""
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


def encode_failure(event: Failed) -> bytes:
    """LocalLab's streams report a failure as `data: [ERROR] <detail>`."""
    return sse_event(f"[ERROR] {event.detail}")


async def event_stream(
    stream: EventSource,
    encode: Callable[[Event], bytes | None],
    failure: Callable[[Failed], bytes] = encode_failure,
    done: bytes = DONE,
) -> AsyncIterator[bytes]:
    """Server-sent events ending with `done` (`data: [DONE]`, unless the surface ends its
    streams otherwise); a failure is sent as `failure` says.

    Events that are already waiting go out in one write, so a slow reader costs fewer
    writes rather than falling further behind.
    """
    try:
        async for first in stream:
            chunk = []
            for event in (first, *stream.drain_ready()):
                if isinstance(event, Failed):
                    chunk.append(failure(event))
                    continue
                encoded = encode(event)
                if encoded:
                    chunk.append(encoded)
            if chunk:
                yield b"".join(chunk)
        if done:
            yield done
    finally:
        stream.cancel()  # the client hung up or we are shutting down: free the slot


def encode_text_event(event: Event) -> bytes | None:
    """/generate streams plain text pieces."""
    if isinstance(event, TextDelta) and event.text:
        return sse_event(event.text)
    return None


class ChunkEncoder(Protocol):
    """A surface's encoding of one streamed answer: an opening event, then each event's."""

    def opening(self) -> bytes: ...

    def encode(self, event: Event) -> bytes | None: ...


async def chunked_stream(
    stream: EventSource,
    chunks: ChunkEncoder,
    failure: Callable[[Failed], bytes] = encode_failure,
    done: bytes = DONE,
) -> AsyncIterator[bytes]:
    """The whole stream of a streamed answer: the encoder's opening, its chunks, `done`."""
    try:
        opening = chunks.opening()
        if opening:
            yield opening
        async for data in event_stream(stream, chunks.encode, failure, done):
            yield data
    finally:
        stream.cancel()
