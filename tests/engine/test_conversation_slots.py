"""Named conversations (OpenAI's prompt_cache_key) keep their slots: a conversation sharing
an agent's instructions with another copies them instead of overwriting the other's history,
and each answer's usage counts the prompt tokens that came from a cache."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from locallab_gguf.engine.types import ChatMessage, Finished, GenerationRequest, TextDelta
from locallab_gguf.models.registry import Registry
from tests.conftest import DEFAULT_ID, TEST_SETTINGS
from tests.support.engine_harness import EngineHarness, running_engine

# Two slots and no prompt cache: a conversation's history lives only in its slot.
SETTINGS = msgspec.structs.replace(TEST_SETTINGS, parallel=2, cache_ram=0)
INSTRUCTIONS = "You are a careful assistant for a small library. " * 20


def ask(harness: EngineHarness, messages: list[ChatMessage], key: str | None) -> tuple[str, int]:
    """The answer's text and how many of its prompt tokens were found cached."""
    events = harness.run(GenerationRequest(messages=tuple(messages), max_tokens=12, cache_key=key))
    finished = events[-1]
    assert isinstance(finished, Finished)
    usage = finished.usage
    assert 0 <= usage.cached_tokens < usage.prompt_tokens
    return "".join(e.text for e in events if isinstance(e, TextDelta)), usage.cached_tokens


def conversation(harness: EngineHarness, keys: tuple[str | None, str | None]) -> tuple[int, int]:
    """A asks, B (same instructions) asks, A follows up: (B's cached, A's follow-up cached)."""
    system = ChatMessage(role="system", content=INSTRUCTIONS)
    first = [system, ChatMessage(role="user", content="Which shelf holds the atlases?")]
    answer, _ = ask(harness, first, keys[0])
    _, b_cached = ask(
        harness, [system, ChatMessage(role="user", content="When do you open?")], keys[1]
    )
    follow_up = [
        *first,
        ChatMessage(role="assistant", content=answer),
        ChatMessage(role="user", content="And the maps?"),
    ]
    _, a_cached = ask(harness, follow_up, keys[0])
    return b_cached, a_cached


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_a_named_conversation_keeps_its_history_in_its_slot(
    registry: Registry, model_path: Path, named: bool
) -> None:
    with running_engine(model_path, registry.get(DEFAULT_ID), SETTINGS) as harness:
        instructions = harness.engine.count_prompt_tokens(
            GenerationRequest(
                messages=(ChatMessage(role="system", content=INSTRUCTIONS),), max_tokens=1
            )
        )
        b_cached, a_cached = conversation(harness, ("a", "b") if named else (None, None))
    # B found the instructions cached either way: in A's slot, or copied from it.
    assert b_cached >= instructions - 8
    if named:
        # A's first turn was still in its slot: more than the instructions were cached.
        assert a_cached > instructions + 8
    else:
        # B took A's slot (it shared the longest prefix): only the instructions were left.
        assert a_cached <= instructions + 8
