"""Request times kept in Redis, so that every replica using the same Redis enforces one limit.

Each client has a sorted set of its request times (score = time); one Lua script trims it,
counts every window and adds the request only when all have room, atomically, so two
replicas can never both take a client's last place in a window. Keys expire once their
longest window has passed, so idle clients cost Redis nothing.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from locallab_gguf.ratelimit.limiter import (
    Clock,
    Recorded,
    StoreUnavailable,
    Window,
    WindowCount,
    longest,
)

log = logging.getLogger(__name__)

KEY_PREFIX = "locallab:ratelimit:"

# KEYS[1] the client's sorted set. ARGV: the horizon (times at or before it are dropped), the
# request's time, its unique member, the key's lifetime in ms, then for each window its
# exclusive lower bound ("(" .. now - seconds) and its limit. Bounds are computed by the
# caller: Lua would print floats with 14 digits and move the window's edge. The reply is
# what `count_windows` computes in Python: accepted, then count, oldest and freeing times
# for each window ('' for none), so that only a few numbers cross the network.
RECORD_SCRIPT = """
local key = KEYS[1]
redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
local accepted = 1
for i = 5, #ARGV, 2 do
  if redis.call('ZCOUNT', key, ARGV[i], '+inf') >= tonumber(ARGV[i + 1]) then
    accepted = 0
    break
  end
end
if accepted == 1 then
  redis.call('ZADD', key, ARGV[2], ARGV[3])
  redis.call('PEXPIRE', key, ARGV[4])
end
local reply = {accepted}
for i = 5, #ARGV, 2 do
  local limit = tonumber(ARGV[i + 1])
  local count = redis.call('ZCOUNT', key, ARGV[i], '+inf')
  local oldest, freeing = '', ''
  if count > 0 then
    oldest = redis.call('ZRANGEBYSCORE', key, ARGV[i], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2]
  end
  if count >= limit then
    freeing = redis.call(
      'ZRANGEBYSCORE', key, ARGV[i], '+inf', 'WITHSCORES', 'LIMIT', count - limit, 1)[2]
  end
  reply[#reply + 1] = count
  reply[#reply + 1] = oldest
  reply[#reply + 1] = freeing
end
return reply
"""


class RedisStore:
    """A WindowStore over Redis that survives Redis going away.

    A failed call raises StoreUnavailable and, for `retry_interval` seconds, later calls fail
    at once instead of each waiting on a dead connection; then the next call tries again, and
    the connection pool reconnects by itself. The outage and the recovery are logged once each.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.location = redacted(url)
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Our own back-off decides when to try again; a retry inside a request only adds
            # latency while Redis is down.
            retry=Retry(NoBackoff(), 0),
        )
        self._script = self._redis.register_script(RECORD_SCRIPT)
        self._members = itertools.count()
        self._member_prefix = secrets.token_hex(4)
        self._retry_interval = retry_interval
        self._monotonic = monotonic
        self._down_until: float | None = None
        self._outage: str | None = None

    async def record(self, client: str, now: float, windows: Sequence[Window]) -> Recorded:
        if self._down_until is not None and self._monotonic() < self._down_until:
            raise StoreUnavailable(self._outage_message())
        args: list[str | int] = [
            repr(now - longest(windows)),
            repr(now),
            # Unique across replicas and requests, so two requests at one instant both count.
            f"{self._member_prefix}:{next(self._members)}",
            math.ceil(longest(windows) * 1000),
        ]
        for window in windows:
            args += ["(" + repr(now - window.seconds), window.limit]
        try:
            reply = await self._script(keys=[KEY_PREFIX + client], args=args)
        except RedisError as exc:
            self._went_down(exc)
            raise StoreUnavailable(self._outage_message()) from exc
        self._came_back()
        counts = [
            WindowCount(int(count), _time(oldest), _time(freeing))
            for count, oldest, freeing in zip(reply[1::3], reply[2::3], reply[3::3], strict=True)
        ]
        return Recorded(bool(reply[0]), counts)

    def _went_down(self, exc: RedisError) -> None:
        self._down_until = self._monotonic() + self._retry_interval
        if self._outage is None:
            self._outage = f"{type(exc).__name__}: {exc}"
            log.warning("%s; requests go on as --rate-limit-fail says", self._outage_message())

    def _came_back(self) -> None:
        self._down_until = None
        if self._outage is not None:
            self._outage = None
            log.warning("the rate-limit store %s is reachable again", self.location)

    def _outage_message(self) -> str:
        return f"the rate-limit store {self.location} is unreachable ({self._outage})"

    async def close(self) -> None:
        await self._redis.aclose()


def _time(score: bytes) -> float | None:
    # Redis sends scores with 17 significant digits: the float comes back exactly.
    return float(score) if score else None


def redacted(url: str) -> str:
    """The URL without its password, fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()
