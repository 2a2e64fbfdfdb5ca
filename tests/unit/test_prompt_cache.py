"""The prompt cache's own rules: exact tokens, its bound, and what it keeps on disk."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from locallab_gguf.engine.runtime.prompt_cache import FORMAT_VERSION, MAGIC, SUFFIX, PromptCache

MODEL_A = "a" * 64
MODEL_B = "b" * 64
BUILD = "llama-cpp-python 0.3.36"


def tokens_of(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(49_152) for _ in range(length)]


def state_of(tokens: list[int]) -> bytearray:
    """Stand-in state bytes that name their tokens, so a mix-up would show."""
    return bytearray(b"".join(token.to_bytes(4, "little") for token in tokens))


def test_the_cache_stays_within_its_bound_under_a_flood_of_distinct_prompts() -> None:
    cache = PromptCache(capacity_bytes=64 * 1024)
    kept = tokens_of(500, seed=0)
    cache.put(kept, state_of(kept))
    for seed in range(1, 200):
        prompt = tokens_of(random.Random(seed).randrange(32, 2000), seed)
        cache.put(prompt, state_of(prompt))
        entry, _ = cache.longest_match(kept)
        if entry is not None:
            cache.take(entry)  # used again and again: the least recently used go first
        stats = cache.stats()
        assert stats.cache_bytes <= 64 * 1024
        assert stats.cache_entries >= 1
    entry, matched = cache.longest_match(kept)
    assert entry is not None and matched == 500
    assert cache.take(entry) == state_of(kept)


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        ("one token differs in the middle", lambda t: [*t[:150], t[150] + 1, *t[151:]]),
        ("a hash-sized prefix is shared, the rest differs", lambda t: t[:64] + tokens_of(236, 9)),
        ("the first token differs", lambda t: [t[0] + 1, *t[1:]]),
    ],
)
def test_an_entry_matches_only_up_to_the_first_differing_token(name: str, variant: object) -> None:
    saved = tokens_of(300, seed=1)
    cache = PromptCache(capacity_bytes=1 << 20)
    cache.put(saved, state_of(saved))
    assert callable(variant)
    asked = variant(saved)
    first_difference = next(i for i, (a, b) in enumerate(zip(saved, asked, strict=True)) if a != b)
    entry, matched = cache.longest_match(asked)
    assert matched == first_difference, name
    assert (entry is None) == (first_difference == 0)


def test_a_prompt_the_cache_already_covers_is_not_saved_twice() -> None:
    cache = PromptCache(capacity_bytes=1 << 20)
    longer = tokens_of(200, seed=2)
    cache.put(longer, state_of(longer))
    assert not cache.worth_saving(longer[:100])
    shorter = tokens_of(100, seed=3)
    cache.put(shorter, state_of(shorter))
    extended = [*shorter, 1, 2, 3]
    cache.put(extended, state_of(extended))  # replaces the entry it extends
    assert cache.stats().cache_entries == 2
    assert cache.longest_match(shorter)[0] is not None


def test_entries_on_disk_outlive_the_cache_that_wrote_them(tmp_path: Path) -> None:
    prompt = tokens_of(120, seed=4)
    PromptCache(1 << 20, tmp_path, MODEL_A, BUILD).put(prompt, state_of(prompt))
    reopened = PromptCache(1 << 20, tmp_path, MODEL_A, BUILD)
    entry, matched = reopened.longest_match([*prompt, 7])
    assert entry is not None and matched == 120
    assert not entry.in_memory  # its bytes stay on disk until a request needs them
    assert reopened.take(entry) == state_of(prompt)


def test_disk_entries_of_another_model_truncated_or_of_another_format_are_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other_model = tokens_of(100, seed=5)
    PromptCache(1 << 20, tmp_path / "a", MODEL_B, BUILD).put(other_model, state_of(other_model))
    truncated = tokens_of(100, seed=6)
    PromptCache(1 << 20, tmp_path / "b", MODEL_A, BUILD).put(truncated, state_of(truncated))
    other_build = tokens_of(100, seed=7)
    PromptCache(1 << 20, tmp_path / "c", MODEL_A, "llama-cpp-python 0.3.1").put(
        other_build, state_of(other_build)
    )
    good = tokens_of(100, seed=8)
    PromptCache(1 << 20, tmp_path / "d", MODEL_A, BUILD).put(good, state_of(good))

    directory = tmp_path / "cache"
    directory.mkdir()
    files = {}
    for name, source in (("other-model", "a"), ("truncated", "b"), ("other-build", "c")):
        (path,) = (tmp_path / source).glob("*" + SUFFIX)
        files[name] = directory / path.name
        path.rename(files[name])
    (good_path,) = (tmp_path / "d").glob("*" + SUFFIX)
    good_path.rename(directory / good_path.name)
    data = files["truncated"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) - 10])
    files["other-format"] = directory / ("f" * 40 + SUFFIX)
    files["other-format"].write_bytes(
        MAGIC + (FORMAT_VERSION + 1).to_bytes(4, "little") + bytes(200)
    )
    files["not-a-cache-file"] = directory / ("e" * 40 + SUFFIX)
    files["not-a-cache-file"].write_bytes(b"hello")

    with caplog.at_level(logging.WARNING, logger="locallab_gguf.engine.runtime.prompt_cache"):
        cache = PromptCache(1 << 20, directory, MODEL_A, BUILD)

    for name, path in files.items():
        assert not path.exists(), name
        assert any(path.name in record.getMessage() for record in caplog.records), name
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "another model file" in messages
    assert "truncated" in messages
    assert "not in this cache format" in messages
    assert "another build" in messages
    assert cache.stats().cache_entries == 1
    entry, matched = cache.longest_match(good)
    assert entry is not None and matched == 100
    assert cache.take(entry) == state_of(good)
