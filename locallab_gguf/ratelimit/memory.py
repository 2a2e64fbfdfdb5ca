"""Request times kept in this process: exact, fast, and bounded in memory."""

from __future__ import annotations

import bisect
import logging
from array import array
from collections import OrderedDict
from collections.abc import Sequence

from locallab_gguf.ratelimit.limiter import Recorded, Window, count_windows, has_room, longest

log = logging.getLogger(__name__)


class MemoryStore:
    """Each client's times in a compact array, clients ordered by when they were last seen.

    A client idle for longer than the longest window has nothing left to remember and is
    forgotten as the oldest entries are swept on each request. Past `max_clients` the least
    recently seen client is forgotten even though its window is not over: a flood of new
    addresses costs bounded memory, and a forgotten client only starts with a fresh budget.
    """

    def __init__(self, max_clients: int = 100_000) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.max_clients = max_clients
        self.forgotten_early = 0
        self._times: OrderedDict[str, array[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._times)

    async def record(self, client: str, now: float, windows: Sequence[Window]) -> Recorded:
        horizon = now - longest(windows)
        times = self._times.pop(client, None)
        if times is None:
            times = array("d")
        else:
            del times[: bisect.bisect_right(times, horizon)]
        accepted = has_room(times, now, windows)
        if accepted:
            # insort, not append: a wall clock stepped back must not unsort the times.
            bisect.insort(times, now)
        self._times[client] = times
        self._forget_idle(horizon)
        return Recorded(accepted, count_windows(times, now, windows))

    def _forget_idle(self, horizon: float) -> None:
        # The least recently seen come first; stop at the first one still in its window.
        while self._times:
            client, times = next(iter(self._times.items()))
            if times and times[-1] > horizon:
                break
            del self._times[client]
        while len(self._times) > self.max_clients:
            self._times.popitem(last=False)
            if self.forgotten_early == 0:
                log.warning(
                    "the rate limiter tracks %d clients, its maximum; the least recently seen "
                    "are forgotten before their window ends (raise --rate-limit-max-clients)",
                    self.max_clients,
                )
            self.forgotten_early += 1

    async def close(self) -> None:
        self._times.clear()
