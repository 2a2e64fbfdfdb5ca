"""Per-client rate limits: a sliding-window limiter over a store of request times.

`limiter.py` holds the rules and never does I/O; `memory.py` keeps times in this process,
`redis_store.py` in a Redis shared by replicas.
"""

from __future__ import annotations

from locallab_gguf.ratelimit.limiter import (
    Clock,
    Decision,
    FailPolicy,
    RateLimiter,
    Recorded,
    StoreUnavailable,
    Window,
    WindowStore,
    per_minute_with_burst,
)
from locallab_gguf.ratelimit.memory import MemoryStore
from locallab_gguf.settings import Settings

__all__ = [
    "Clock",
    "Decision",
    "FailPolicy",
    "MemoryStore",
    "RateLimiter",
    "Recorded",
    "StoreUnavailable",
    "Window",
    "WindowStore",
    "open_store",
    "per_minute_with_burst",
    "rate_limiter_for",
]


def open_store(settings: Settings) -> WindowStore:
    if settings.rate_limit_store == "memory":
        return MemoryStore(settings.rate_limit_max_clients)
    # Imported here so that a server without Redis never loads the client library.
    from locallab_gguf.ratelimit.redis_store import RedisStore

    return RedisStore(settings.rate_limit_store)


def rate_limiter_for(settings: Settings, clock: Clock) -> RateLimiter | None:
    """The limiter the settings ask for, or None when limits are off."""
    if not settings.rate_limit:
        return None
    return RateLimiter(
        open_store(settings),
        per_minute_with_burst(settings.requests_per_minute, settings.burst),
        clock=clock,
        fail=settings.rate_limit_fail,
    )
