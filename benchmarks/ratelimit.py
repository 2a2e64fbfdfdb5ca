"""What rate limiting costs: time per request and memory per client, memory and Redis stores.

    .venv/bin/python benchmarks/ratelimit.py [--requests 200000] [--json PATH]

For each store and for 10 and 100,000 clients, `RateLimiter.hit` is timed over --requests
requests spread round-robin over the clients (the Redis store over loopback to a
redis-server that the benchmark starts on a free port), one at a time and, for Redis, 32 at
a time. Memory per tracked client is measured with tracemalloc for the memory store and
with Redis's own INFO for Redis, with one request per client and with a full minute (60
requests; fewer clients, so that the run stays short).
A flood of 300,000 distinct clients against the default cap of 100,000 shows that memory
stops growing. Prints a table and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locallab_gguf.ratelimit import MemoryStore, RateLimiter, per_minute_with_burst  # noqa: E402
from locallab_gguf.ratelimit.redis_store import RedisStore  # noqa: E402
from tests.support.redis_server import running_redis  # noqa: E402

WINDOWS = per_minute_with_burst(60, 10)


class SteppedClock:
    """One second passes per round over all clients: each client sends one request a second,
    which the limits always allow, so every request is recorded (the costlier path)."""

    def __init__(self, clients: int) -> None:
        self.now = 1_800_000_000.0
        self.step = 1.0 / clients

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def client_names(count: int) -> list[str]:
    return [f"ip:10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(count)]


async def time_hits(
    limiter: RateLimiter, clients: list[str], requests: int, concurrency: int
) -> float:
    """Microseconds per request, after one warm-up round that puts every client in the store."""
    await fill(limiter, clients, rounds=1, concurrency=64)
    order = [clients[n % len(clients)] for n in range(requests)]
    started = time.perf_counter()
    if concurrency == 1:
        for client in order:
            await limiter.hit(client)
    else:
        for start in range(0, requests, concurrency):
            await asyncio.gather(*(limiter.hit(c) for c in order[start : start + concurrency]))
    return (time.perf_counter() - started) / requests * 1e6


async def memory_cost(clients: int, requests: int) -> float:
    limiter = RateLimiter(MemoryStore(), WINDOWS, clock=SteppedClock(clients))
    return await time_hits(limiter, client_names(clients), requests, concurrency=1)


async def redis_cost(url: str, clients: int, requests: int, concurrency: int) -> float:
    limiter = RateLimiter(RedisStore(url), WINDOWS, clock=SteppedClock(clients))
    try:
        return await time_hits(limiter, client_names(clients), requests, concurrency)
    finally:
        await limiter.close()


async def fill(
    limiter: RateLimiter, clients: list[str], rounds: int, concurrency: int = 64
) -> None:
    for _ in range(rounds):
        for start in range(0, len(clients), concurrency):
            await asyncio.gather(*(limiter.hit(c) for c in clients[start : start + concurrency]))


def memory_store_bytes_per_client(clients: int, rounds: int) -> float:
    gc.collect()
    tracemalloc.start()
    names = client_names(clients)  # the names are the caller's, not the store's
    before = tracemalloc.get_traced_memory()[0]
    store = MemoryStore(max_clients=clients)
    asyncio.run(fill(RateLimiter(store, WINDOWS, clock=SteppedClock(clients)), names, rounds))
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(store) == clients
    return used / clients


def memory_store_flood(total: int) -> list[dict[str, float]]:
    """Tracked clients and traced memory as `total` distinct clients send one request each,
    all within one minute, against the default cap."""
    gc.collect()
    tracemalloc.start()
    store = MemoryStore()
    limiter = RateLimiter(store, WINDOWS, clock=SteppedClock(total))
    points = []

    async def flood() -> None:
        for n in range(total):
            await limiter.hit(f"ip:flood-{n}")
            if (n + 1) % (total // 6) == 0:
                points.append(
                    {
                        "clients_seen": n + 1,
                        "tracked": len(store),
                        "mib": tracemalloc.get_traced_memory()[0] / 2**20,
                    }
                )

    asyncio.run(flood())
    tracemalloc.stop()
    return points


def redis_bytes_per_client(url: str, clients: int, rounds: int) -> float:
    with redis.Redis.from_url(url) as client:
        client.flushdb()
        before = int(client.info("memory")["used_memory"])
        limiter = RateLimiter(RedisStore(url), WINDOWS, clock=SteppedClock(clients))

        async def run() -> None:
            try:
                await fill(limiter, client_names(clients), rounds)
            finally:
                await limiter.close()

        asyncio.run(run())
        used = int(client.info("memory")["used_memory"]) - before
        assert client.dbsize() == clients
        client.flushdb()
    return used / clients


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/ratelimit.json")
    args = parser.parse_args()
    redis_requests = max(1, args.requests // 10)
    rows: list[dict[str, Any]] = []
    for clients in (10, 100_000):
        cost = asyncio.run(memory_cost(clients, args.requests))
        rows.append({"store": "memory", "clients": clients, "concurrency": 1, "us": cost})
    with running_redis() as server:
        for clients in (10, 100_000):
            for concurrency in (1, 32):
                cost = asyncio.run(redis_cost(server.url, clients, redis_requests, concurrency))
                rows.append(
                    {"store": "redis", "clients": clients, "concurrency": concurrency, "us": cost}
                )
                with redis.Redis.from_url(server.url) as client:
                    client.flushdb()
        redis_memory = {
            "1 request": redis_bytes_per_client(server.url, 20_000, 1),
            "60 requests": redis_bytes_per_client(server.url, 1_000, 60),
        }
    memory_memory = {
        "1 request": memory_store_bytes_per_client(20_000, 1),
        "60 requests": memory_store_bytes_per_client(1_000, 60),
    }
    flood = memory_store_flood(300_000)

    print(f"rate limiter cost, {cpu_model()}, {os.cpu_count()} logical cores")
    print(f"{'store':<8}{'clients':>10}{'in flight':>11}{'µs/request':>12}{'requests/s':>12}")
    for row in rows:
        row["requests_per_s"] = 1e6 / row["us"]
        print(
            f"{row['store']:<8}{row['clients']:>10,}{row['concurrency']:>11}"
            f"{row['us']:>12.1f}{row['requests_per_s']:>12,.0f}"
        )
    print("\nmemory per tracked client (bytes)")
    print(f"{'store':<8}{'1 request':>12}{'60 requests':>13}")
    for name, sizes in (("memory", memory_memory), ("redis", redis_memory)):
        print(f"{name:<8}{sizes['1 request']:>12,.0f}{sizes['60 requests']:>13,.0f}")
    print("\nmemory store under a flood of distinct clients in one minute (default cap 100,000)")
    print(f"{'clients seen':>13}{'tracked':>10}{'MiB':>8}")
    for point in flood:
        print(f"{point['clients_seen']:>13,}{point['tracked']:>10,}{point['mib']:>8.1f}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"cpu": cpu_model(), "logical_cores": os.cpu_count()},
        "python": platform.python_version(),
        "requests": {"memory": args.requests, "redis": redis_requests},
        "cost": rows,
        "bytes_per_client": {"memory": memory_memory, "redis": redis_memory},
        "flood": flood,
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
