"""One prompt-cache budget shared by several models' caches (engine/runtime/cache_ledger.py):
the least recently used state goes first whichever cache holds it, and together they never hold more
than the budget. No model is needed: the caches are handed bytes."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

import pytest

from locallab_gguf.engine.runtime.cache_ledger import LedgerAccount, create_ledger
from locallab_gguf.engine.runtime.prompt_cache import MIN_SAVED_TOKENS, PromptCache
from locallab_gguf.models.registry import Registry
from locallab_gguf.placement.hardware import HardwareProbe, MemoryInfo
from locallab_gguf.serving.loader import LocalPlanner
from locallab_gguf.serving.prompt_cache_budget import PromptCacheBudget
from tests.conftest import DEFAULT_ID, TEST_SETTINGS
from tests.support.nvml_standin import NvmlStandIn

BUDGET = 1000


def tokens(tag: int) -> list[int]:
    return [tag] * MIN_SAVED_TOKENS


def state(size: int) -> bytearray:
    return bytearray(size)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger"
    create_ledger(path, BUDGET, tables=4, rows=8)
    return path


def cache_on(path: Path) -> PromptCache:
    return PromptCache(capacity_bytes=10 * BUDGET, ledger=LedgerAccount(path))


def held(*caches: PromptCache) -> int:
    return sum(cache.stats().cache_bytes for cache in caches)


def test_capacity_is_the_shared_budget(ledger_path: Path) -> None:
    cache = cache_on(ledger_path)
    assert cache.stats().cache_capacity_bytes == BUDGET
    cache.put(tokens(1), state(BUDGET + 1))
    assert held(cache) == 0


def test_the_oldest_state_of_another_model_goes_first(ledger_path: Path) -> None:
    first, second = cache_on(ledger_path), cache_on(ledger_path)
    first.put(tokens(1), state(400))
    first.put(tokens(2), state(400))
    second.put(tokens(3), state(400))
    # The other cache still holds its oldest state until its next step: no room yet.
    assert held(first, second) == 800
    assert second.stats().cache_entries == 0
    first.settle()
    assert [len(entry.tokens) for entry in first._entries.values()] == [MIN_SAVED_TOKENS]
    assert first.longest_match(tokens(1))[0] is None  # the least recently used one went
    assert first.longest_match(tokens(2))[0] is not None
    second.put(tokens(3), state(400))
    assert held(first, second) == 800
    assert second.longest_match(tokens(3))[0] is not None


def test_a_state_used_recently_outlives_an_older_unused_one(ledger_path: Path) -> None:
    first, second = cache_on(ledger_path), cache_on(ledger_path)
    first.put(tokens(1), state(300))
    second.put(tokens(2), state(300))
    entry, _ = first.longest_match(tokens(1))
    assert entry is not None and first.take(entry) is not None  # used again: now the newest
    first.put(tokens(3), state(500))  # needs 100 more: the second cache's state is the oldest
    second.settle()
    assert second.stats().cache_entries == 0
    assert first.longest_match(tokens(1))[0] is not None
    first.put(tokens(3), state(500))
    assert held(first, second) == 800


def test_its_own_oldest_state_is_dropped_at_once(ledger_path: Path) -> None:
    first, second = cache_on(ledger_path), cache_on(ledger_path)
    first.put(tokens(1), state(500))
    second.put(tokens(2), state(300))
    first.put(tokens(3), state(400))  # its own state is the oldest: dropped now, then stored
    assert first.longest_match(tokens(1))[0] is None
    assert first.longest_match(tokens(3))[0] is not None
    assert held(first, second) == 700


def test_a_closed_cache_gives_its_share_back(ledger_path: Path) -> None:
    first, second = cache_on(ledger_path), cache_on(ledger_path)
    first.put(tokens(1), state(900))
    first.close()
    second.put(tokens(2), state(900))
    assert second.longest_match(tokens(2))[0] is not None


def _hold_and_die(path: str) -> None:
    cache = PromptCache(capacity_bytes=BUDGET, ledger=LedgerAccount(Path(path)))
    cache.put(tokens(1), state(900))
    # Exits without closing: as a worker killed by a crash.


def test_a_dead_process_share_is_not_counted(ledger_path: Path) -> None:
    child = multiprocessing.get_context("spawn").Process(
        target=_hold_and_die, args=(str(ledger_path),)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    cache = cache_on(ledger_path)
    cache.put(tokens(2), state(900))
    assert cache.longest_match(tokens(2))[0] is not None


def test_caches_under_random_traffic_never_hold_more_than_the_budget(ledger_path: Path) -> None:
    caches = [cache_on(ledger_path) for _ in range(3)]
    rng = random.Random(7)
    puts = saved = 0
    for step in range(600):
        cache = rng.choice(caches)
        cache.settle()  # as each engine does before its step
        if rng.random() < 0.6:
            before = cache.stats().cache_entries
            cache.put(tokens(step + 10), state(rng.randint(50, 450)))
            puts += 1
            saved += cache.stats().cache_entries > before
        else:
            entry, _ = cache.longest_match(tokens(rng.randint(10, step + 10)))
            if entry is not None:
                cache.take(entry)
        assert held(*caches) <= BUDGET
        assert caches[0]._ledger is not None and caches[0]._ledger.held_bytes() == held(*caches)
    # A save that needs another cache's states waits for that cache's next step (it is
    # skipped now); the others find room at once: eviction works, not only refusal.
    assert saved > puts / 3


def test_the_room_planner_counts_what_the_caches_may_still_take(
    registry: Registry, model_path: Path
) -> None:
    gib = 1024**3
    reading = MemoryInfo(total_bytes=16 * gib, available_bytes=8 * gib, used_percent=0.0)
    probe = HardwareProbe(False, nvml=lambda: NvmlStandIn([]), memory=lambda: reading)
    spec = registry.get(DEFAULT_ID)
    alone = LocalPlanner(TEST_SETTINGS, probe).plan(spec, model_path)
    budget = PromptCacheBudget(gib)
    try:
        shared = LocalPlanner(TEST_SETTINGS, probe, budget).plan(spec, model_path)
        assert shared.ram_available_bytes == alone.ram_available_bytes
        assert shared.ram_promised_bytes == gib
        assert shared.ram_needed_bytes == alone.ram_needed_bytes + gib
        assert shared.ram_total_bytes == alone.ram_total_bytes - gib
        assert shared.estimate == alone.estimate
        # What the caches hold is gone from the available memory already: only the rest of
        # the budget is still promised.
        cache = PromptCache(capacity_bytes=0, ledger=LedgerAccount(budget.ledger_path))
        cache.put(tokens(1), state(gib // 4))
        held = LocalPlanner(TEST_SETTINGS, probe, budget).plan(spec, model_path)
        assert held.ram_promised_bytes == gib - gib // 4
        cache.close()
    finally:
        budget.close()
