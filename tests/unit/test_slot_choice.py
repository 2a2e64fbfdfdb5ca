"""Which idle slot a request takes: the longest shared prefix, and named conversations
(OpenAI's prompt_cache_key) keep to their own slots while another is free."""

from __future__ import annotations

from locallab_gguf.engine.runtime.job import Slot
from locallab_gguf.engine.runtime.slot_reuse import best_slot

INSTRUCTIONS = list(range(100, 400))  # an agent's long instructions, shared by conversations


def slot(seq_id: int, cached: list[int], key: str | None = None, last_used: int = 0) -> Slot:
    made = Slot(seq_id)
    made.cached, made.cache_key, made.last_used = list(cached), key, last_used
    return made


def test_without_a_name_the_longest_shared_prefix_wins_then_the_least_used() -> None:
    holder = slot(0, [*INSTRUCTIONS, 1, 2, 3], key="a")
    empty_old, empty_new = slot(1, [], last_used=1), slot(2, [], last_used=5)
    assert best_slot([empty_new, holder, empty_old], [*INSTRUCTIONS, 7]) is holder
    assert best_slot([empty_new, empty_old], [9, 9]) is empty_old


def test_a_named_conversation_leaves_another_ones_slot_alone_while_one_is_free() -> None:
    conversation_a = slot(0, [*INSTRUCTIONS, 1, 2, 3], key="a")
    free = slot(1, [5, 6])
    # b shares the instructions with a's slot, but takes the free one (and copies them).
    assert best_slot([conversation_a, free], [*INSTRUCTIONS, 8], cache_key="b") is free
    # With no other slot left, it has to take a's.
    assert best_slot([conversation_a], [*INSTRUCTIONS, 8], cache_key="b") is conversation_a


def test_a_named_conversation_returns_to_its_own_slot() -> None:
    own = slot(0, [*INSTRUCTIONS, 1, 2, 3, 4], key="a", last_used=9)
    unnamed = slot(1, [*INSTRUCTIONS, 1, 2, 3, 4], last_used=1)
    # The same prefix in both: its own slot, though the other was used less recently.
    assert best_slot([unnamed, own], [*INSTRUCTIONS, 1, 2, 3, 4, 5], cache_key="a") is own
    # A longer prefix elsewhere still wins: the cache is about the tokens.
    longer = slot(2, [*INSTRUCTIONS, 1, 2, 3, 4, 5])
    assert best_slot([own, longer], [*INSTRUCTIONS, 1, 2, 3, 4, 5, 6], cache_key="a") is longer
