"""Keep a quiet stream alive: an event the client ignores, sent while nothing else comes.

A long prompt on a slow machine can take minutes before the first token; clients with an
idle watchdog on the stream (Claude Code drops a stream quiet for a while, then retries the
whole request from the start) would give up on an answer that is still coming.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

KEEPALIVE_SECONDS = 10.0


async def with_keepalive(
    chunks: AsyncIterator[bytes], keepalive: bytes, every: float = KEEPALIVE_SECONDS
) -> AsyncIterator[bytes]:
    """`chunks`, with `keepalive` in between whenever `every` seconds pass without one."""
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(chunks))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield keepalive
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield chunk
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
