"""The sliding-window limiter under a fake clock, against the memory store and a real Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis

from locallab_gguf.errors import RateLimitStoreUnavailable
from locallab_gguf.ratelimit import (
    Decision,
    MemoryStore,
    RateLimiter,
    Window,
    WindowStore,
    per_minute_with_burst,
)
from locallab_gguf.ratelimit.redis_store import KEY_PREFIX, RedisStore, redacted
from tests.support.redis_server import RedisServer, running_redis

LOCALLAB = per_minute_with_burst(60, 10)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.start = now
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self, offset: float) -> FakeClock:
        self.now = self.start + offset
        return self


StoreFactory = Callable[[], WindowStore]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    if request.param == "memory":
        return MemoryStore
    server: RedisServer = request.getfixturevalue("redis_server")
    with redis.Redis.from_url(server.url) as client:
        client.flushdb()
    return lambda: RedisStore(server.url)


Scenario = Callable[[RateLimiter, FakeClock], Awaitable[None]]


def run(
    make_store: StoreFactory, scenario: Scenario, windows: tuple[Window, ...] = LOCALLAB
) -> None:
    """Run `scenario` in one event loop (a Redis connection belongs to the loop that made it)."""

    async def main() -> None:
        clock = FakeClock()
        limiter = RateLimiter(make_store(), windows, clock=clock)
        try:
            await scenario(limiter, clock)
        finally:
            await limiter.close()

    asyncio.run(main())


async def hit(limiter: RateLimiter, client: str = "ip:192.0.2.1") -> Decision:
    decision = await limiter.hit(client)
    assert decision is not None
    return decision


def test_sixty_a_minute_refuses_the_61st_until_the_first_leaves_the_window(
    make_store: StoreFactory,
) -> None:
    async def scenario(limiter: RateLimiter, clock: FakeClock) -> None:
        for second in range(60):  # one a second, the first at 0.25 s
            clock.at(0.25 + second)
            assert (await hit(limiter, "ip:a")).allowed
        refused = await hit(limiter, "ip:a")
        assert not refused.allowed
        assert (refused.limit, refused.window.seconds, refused.retry_after) == (60, 60, 1)
        clock.at(60.0)
        assert not (await hit(limiter, "ip:a")).allowed  # the first request is still inside
        clock.at(60.25)
        assert (await hit(limiter, "ip:a")).allowed  # ... and now it is not
        assert not (await hit(limiter, "ip:a")).allowed  # the second one leaves at 61.25

    run(make_store, scenario)


def test_a_burst_of_ten_in_a_second_then_room_again_after_it(make_store: StoreFactory) -> None:
    async def scenario(limiter: RateLimiter, clock: FakeClock) -> None:
        clock.at(5.0)
        for _ in range(10):
            assert (await hit(limiter)).allowed
        refused = await hit(limiter)
        assert not refused.allowed
        assert (refused.limit, refused.remaining, refused.retry_after) == (10, 0, 1)
        assert refused.policy == "60;w=60, 10;w=1"
        clock.at(5.999)
        assert not (await hit(limiter)).allowed
        clock.at(6.0)
        for _ in range(10):
            assert (await hit(limiter)).allowed
        assert not (await hit(limiter)).allowed

    run(make_store, scenario)


def test_refused_requests_are_not_counted(make_store: StoreFactory) -> None:
    async def scenario(limiter: RateLimiter, clock: FakeClock) -> None:
        clock.at(0)
        for _ in range(10):
            assert (await hit(limiter)).allowed
        for offset in range(100):  # hammering while refused
            clock.at(offset / 101)
            assert not (await hit(limiter)).allowed
        clock.at(1.0)  # Retry-After was 1 s: a client that waited gets its whole burst
        decisions = [await hit(limiter) for _ in range(10)]
        assert all(decision.allowed for decision in decisions)
        # 20 counted in the minute, not 120: the refused ones left no trace.
        clock.at(2.0)
        assert (await hit(limiter)).remaining == 9
        clock.at(3.0)
        for _ in range(9):
            await hit(limiter)
        assert (await hit(limiter)).remaining == 0  # 30 in the minute; the burst is spent

    run(make_store, scenario)


def test_headers_describe_the_window_nearest_exhaustion(make_store: StoreFactory) -> None:
    async def scenario(limiter: RateLimiter, clock: FakeClock) -> None:
        clock.at(0)
        first = await hit(limiter)
        assert (first.limit, first.remaining, first.reset, first.retry_after) == (10, 9, 1, 0)
        for second in range(1, 55):
            clock.at(second)
            await hit(limiter)
        # 55 in the minute, 1 in the last second: the minute is nearer to running out.
        clock.at(55.5)
        decision = await hit(limiter)
        assert decision.allowed
        assert (decision.limit, decision.remaining) == (60, 4)
        assert decision.reset == 5  # the request at 0 leaves the minute at 60

    run(make_store, scenario)


def test_retry_after_is_the_longest_wait_of_the_full_windows(make_store: StoreFactory) -> None:
    async def scenario(limiter: RateLimiter, clock: FakeClock) -> None:
        for offset in (0, 0, 1, 1):
            clock.at(offset)
            assert (await hit(limiter)).allowed
        clock.at(1.5)  # both windows are full: the burst for 0.5 s more, the other for 8.5 s
        refused = await hit(limiter)
        assert (refused.window, refused.retry_after, refused.reset) == (Window(4, 10), 9, 9)
        clock.at(9.5)
        assert (await hit(limiter)).retry_after == 1  # rounded up, never early
        clock.at(10)
        assert (await hit(limiter)).allowed

    run(make_store, scenario, windows=(Window(4, 10), Window(2, 1)))


def test_clients_have_budgets_of_their_own(make_store: StoreFactory) -> None:
    async def scenario(limiter: RateLimiter, clock: FakeClock) -> None:
        clock.at(0)
        clients = [f"ip:10.0.{n // 256}.{n % 256}" for n in range(300)]
        for _ in range(10):
            for client in clients:
                assert (await hit(limiter, client)).allowed
        for client in clients:
            assert not (await hit(limiter, client)).allowed
        assert (await hit(limiter, "key:someone-else")).remaining == 9

    run(make_store, scenario)


def test_idle_clients_are_forgotten_by_the_memory_store() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        limiter = RateLimiter(store, LOCALLAB, clock=(clock := FakeClock()))
        for client in ("ip:a", "ip:b", "ip:c"):
            await hit(limiter, client)
        clock.at(30)
        await hit(limiter, "ip:d")
        assert len(store) == 4
        clock.at(60.5)  # a, b and c have nothing left in any window; d has
        await hit(limiter, "ip:e")
        assert len(store) == 2

    asyncio.run(scenario())


def test_a_flood_of_new_clients_keeps_the_memory_store_bounded() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_clients=1000)
        limiter = RateLimiter(store, LOCALLAB, clock=FakeClock())
        for n in range(5000):
            await hit(limiter, f"ip:flood-{n}")
        assert len(store) == 1000
        assert store.forgotten_early == 4000
        assert (await hit(limiter, "ip:flood-4999")).remaining == 8  # the newest are kept

    asyncio.run(scenario())


def test_redis_keys_expire_with_the_longest_window(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        limiter = RateLimiter(RedisStore(redis_server.url), LOCALLAB, clock=FakeClock())
        try:
            await hit(limiter, "ip:ttl")
        finally:
            await limiter.close()

    asyncio.run(scenario())
    with redis.Redis.from_url(redis_server.url) as client:
        assert 59_000 < client.pttl(KEY_PREFIX + "ip:ttl") <= 60_000


def test_two_replicas_sharing_redis_enforce_one_limit(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        replicas = [
            RateLimiter(RedisStore(redis_server.url), LOCALLAB, clock=clock) for _ in range(2)
        ]
        try:
            results = await asyncio.gather(*(hit(replicas[n % 2], "ip:shared") for n in range(25)))
            assert sum(decision.allowed for decision in results) == 10
        finally:
            for replica in replicas:
                await replica.close()

    asyncio.run(scenario())


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_redis_going_away_fails_open_or_closed_then_recovers() -> None:
    records = Records()
    logger = logging.getLogger("locallab_gguf.ratelimit")
    logger.addHandler(records)

    async def scenario(server: RedisServer) -> None:
        monotonic = FakeMonotonic()
        clock = FakeClock()
        stores = [RedisStore(server.url, monotonic=monotonic, retry_interval=1.0) for _ in "oc"]
        fail_open = RateLimiter(stores[0], LOCALLAB, clock=clock, fail="open")
        fail_closed = RateLimiter(stores[1], LOCALLAB, clock=clock, fail="closed")
        try:
            assert (await hit(fail_open)).allowed
            assert (await hit(fail_closed)).allowed
            server.stop()
            assert await fail_open.hit("ip:192.0.2.1") is None  # served, unjudged
            with pytest.raises(RateLimitStoreUnavailable, match="Retry in 1 s"):
                await fail_closed.hit("ip:192.0.2.1")
            server.start()  # the same port, empty
            # Within the retry interval the store does not try Redis again...
            assert await fail_open.hit("ip:192.0.2.1") is None
            # ... and after it, the pool reconnects by itself.
            monotonic.now += 1.0
            assert (await hit(fail_open)).remaining == 9
            assert (await hit(fail_closed)).remaining == 8
        finally:
            await fail_open.close()
            await fail_closed.close()

    try:
        with running_redis() as server:
            asyncio.run(scenario(server))
    finally:
        logger.removeHandler(records)
    # Once each per store: the outage (not once per request), then the recovery.
    assert len(records.messages) == 4, records.messages
    assert sum("is unreachable (ConnectionError" in m for m in records.messages) == 2
    assert sum("is reachable again" in m for m in records.messages) == 2


def test_redis_url_in_logs_hides_the_password() -> None:
    assert redacted("redis://:secret@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert redacted("redis://user:secret@h:1/2") == "redis://user:***@h:1/2"
    assert redacted("redis://h:1/2") == "redis://h:1/2"
