"""The sliding-window limiter: every window's count of a client's requests stays under its limit.

A request at time `now` counts against a window of `seconds` while `now - seconds < t`, so
with 60 per 60 s, sixty requests at t = 0…59 s let the next one through at t = 60 s. Only
accepted requests are recorded: a client that waits out its `retry_after` gets through.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, Protocol

import msgspec

from locallab_gguf.errors import RateLimitStoreUnavailable

log = logging.getLogger(__name__)

Clock = Callable[[], float]
FailPolicy = Literal["open", "closed"]


class Window(msgspec.Struct, frozen=True):
    """At most `limit` requests in any trailing `seconds`."""

    limit: int
    seconds: float

    @property
    def policy(self) -> str:
        return f"{self.limit};w={self.seconds:g}"


class WindowCount(NamedTuple):
    """A client's requests inside one window, after the store's verdict."""

    requests: int
    oldest: float | None  # the earliest of them; None when there are none
    # When `requests` is at the limit or over it, the request whose leaving makes room.
    freeing: float | None


class Recorded(NamedTuple):
    """What a store did with one request: whether it counted it, and then, for each window in
    the order given, the client's requests inside it (this one included when counted)."""

    accepted: bool
    windows: Sequence[WindowCount]


class Decision(msgspec.Struct, frozen=True):
    """The verdict on one request and what the client is told about its budget.

    `limit`, `remaining` and `reset` (whole seconds until `remaining` grows) describe the
    window nearest to exhaustion; `retry_after` (whole seconds, 0 when allowed) the wait
    until every window has room again.
    """

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int
    window: Window
    policy: str


class WindowStore(Protocol):
    """Keeps each client's recent request times; `record` is atomic per client."""

    async def record(self, client: str, now: float, windows: Sequence[Window]) -> Recorded:
        """Forget times outside the longest window, then record `now` if every window has
        fewer than its limit. Raises StoreUnavailable when the store cannot be reached."""
        ...

    async def close(self) -> None: ...


class StoreUnavailable(Exception):
    """The store could not be reached; the limiter decides what that means."""


def policy_of(windows: Sequence[Window]) -> str:
    """The RateLimit-Policy header: '60;w=60, 10;w=1'."""
    return ", ".join(window.policy for window in windows)


def longest(windows: Sequence[Window]) -> float:
    return max(window.seconds for window in windows)


def count_within(times: Sequence[float], now: float, window: Window) -> int:
    """How many of the ascending `times` fall inside `window` at `now`."""
    return len(times) - bisect.bisect_right(times, now - window.seconds)


def has_room(times: Sequence[float], now: float, windows: Sequence[Window]) -> bool:
    return all(count_within(times, now, window) < window.limit for window in windows)


def count_windows(
    times: Sequence[float], now: float, windows: Sequence[Window]
) -> list[WindowCount]:
    """What `Recorded.windows` holds, from a client's ascending request times."""
    counts = []
    for window in windows:
        count = count_within(times, now, window)
        first = len(times) - count
        counts.append(
            WindowCount(
                count,
                times[first] if count else None,
                times[first + count - window.limit] if count >= window.limit else None,
            )
        )
    return counts


class _Budget(NamedTuple):
    window: Window
    remaining: int
    reset: int  # whole seconds until `remaining` grows
    retry_after: int  # whole seconds until the window has room; 0 when it has


def _budget(counted: WindowCount, now: float, window: Window) -> _Budget:
    if counted.oldest is None:
        return _Budget(window, window.limit, 0, 0)
    reset = _whole_seconds(counted.oldest + window.seconds - now)
    if counted.freeing is None:
        return _Budget(window, max(0, window.limit - counted.requests), reset, 0)
    return _Budget(window, 0, reset, _whole_seconds(counted.freeing + window.seconds - now))


def decide(recorded: Recorded, now: float, windows: Sequence[Window], policy: str) -> Decision:
    """Turn what the store recorded into the verdict and the numbers sent to the client."""
    budgets = [
        _budget(counted, now, window)
        for counted, window in zip(recorded.windows, windows, strict=True)
    ]
    if recorded.accepted:
        nearest = min(budgets, key=lambda budget: (budget.remaining, -budget.reset))
        return Decision(
            True, nearest.window.limit, nearest.remaining, nearest.reset, 0, nearest.window, policy
        )
    binding = max(budgets, key=lambda budget: budget.retry_after)
    return Decision(
        False,
        binding.window.limit,
        0,
        binding.retry_after,
        binding.retry_after,
        binding.window,
        policy,
    )


def _whole_seconds(seconds: float) -> int:
    # Rounded up, so a client that waits this long is never early.
    return max(1, math.ceil(seconds))


class RateLimiter:
    """Judges each request of a client against the windows, keeping times in `store`."""

    def __init__(
        self,
        store: WindowStore,
        windows: Sequence[Window],
        *,
        clock: Clock = time.time,
        fail: FailPolicy = "open",
    ) -> None:
        if not windows:
            raise ValueError("a rate limiter needs at least one window")
        self.store = store
        self.windows = tuple(windows)
        self.policy = policy_of(self.windows)
        self._clock = clock
        self._fail = fail

    async def hit(self, client: str) -> Decision | None:
        """The verdict on one request from `client`, counting it when allowed.

        None when the store is unreachable and the policy is to fail open: the request goes
        through unjudged. With the policy 'closed' that raises RateLimitStoreUnavailable.
        """
        now = self._clock()
        try:
            recorded = await self.store.record(client, now, self.windows)
        except StoreUnavailable as exc:
            # The store logs what went wrong; the client only learns that it must wait.
            if self._fail == "closed":
                raise RateLimitStoreUnavailable() from exc
            return None
        return decide(recorded, now, self.windows, self.policy)

    async def close(self) -> None:
        await self.store.close()


def per_minute_with_burst(requests_per_minute: int, burst: int) -> tuple[Window, ...]:
    """LocalLab's policy: `requests_per_minute` in any 60 s and `burst` in any 1 s."""
    return (Window(requests_per_minute, 60), Window(burst, 1))
