"""Prompt reuse in the default mode: shared prefixes, the prompt cache in RAM and on disk."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from llama_cpp import Llama
from prometheus_client.parser import text_string_to_metric_families

from locallab_gguf.engine.runtime.prefix import common_prefix
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import Registry
from locallab_gguf.serving.loader import local_engine_opener
from locallab_gguf.serving.model_manager import ModelManager
from locallab_gguf.settings import Settings
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.servers import RunningServer, app_of, serving

ONE_SLOT_WITH_CACHE = msgspec.structs.replace(TEST_SETTINGS, parallel=1, cache_ram=64)
# Long enough to be worth saving (32 tokens or more), short enough to evaluate quickly.
DOCUMENT = (
    "The river town kept a ledger of every boat that passed: its name, its cargo, the hour it "
    "arrived and the hour it left. In spring the ledger filled with barges of timber and wool; "
    "in autumn with apples, cider and the last of the grain. The keeper wrote in a careful "
    "hand and never missed a boat, even at night. Summary of the ledger:"
)
UNRELATED = (
    "A recipe for bread: mix flour, water, salt and yeast; knead for ten minutes; let it rise "
    "for an hour; shape it, let it rise again, and bake it in a hot oven until it sounds "
    "hollow when tapped underneath. Variations:"
)


@pytest.fixture(scope="module")
def vocab(model_path: Path) -> Iterator[Llama]:
    llama = Llama(str(model_path), vocab_only=True, verbose=False)
    yield llama
    llama.close()


def tokens(vocab: Llama, text: str) -> list[int]:
    return list(vocab.tokenize(text.encode(), add_bos=True, special=True))


def generate(server: RunningServer, prompt: str, max_length: int = 16) -> dict[str, Any]:
    reply = server.client.post(
        "/generate", json={"prompt": prompt, "max_length": max_length, "temperature": 0}
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def reuse(server: RunningServer) -> Any:
    return server.engine_stats().prompt_reuse


@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_a_prompt_restored_from_ram_answers_as_from_its_warm_slot(
    make_server: ServerFactory, deterministic: bool
) -> None:
    server = make_server(msgspec.structs.replace(ONE_SLOT_WITH_CACHE, deterministic=deterministic))
    generate(server, DOCUMENT)
    warm = generate(server, DOCUMENT)  # all but its last token from the slot's own KV
    generate(server, UNRELATED)  # takes the only slot: the document's state is saved first
    assert reuse(server).cache_entries >= 1

    before = server.engine_stats()
    restored = generate(server, DOCUMENT)
    after = server.engine_stats()
    prompt_tokens = restored["usage"]["prompt_tokens"]
    assert after.prompt_reuse.ram_tokens - before.prompt_reuse.ram_tokens == prompt_tokens - 1
    assert after.prompt_tokens_evaluated - before.prompt_tokens_evaluated == 1
    assert after.prompt_reuse.cache_hits == before.prompt_reuse.cache_hits + 1
    assert restored["response"] == warm["response"]


@pytest.mark.parametrize(
    "variant",
    [
        # One word in the middle changed.
        DOCUMENT.replace("timber and wool", "timber and silk"),
        # The first 64 characters shared (a hash's worth), everything after them different.
        DOCUMENT[:64] + UNRELATED,
    ],
    ids=["one-token-in-the-middle", "hash-sized-prefix"],
)
def test_a_saved_prompt_is_restored_only_up_to_the_first_differing_token(
    make_server: ServerFactory, vocab: Llama, variant: str
) -> None:
    server = make_server(ONE_SLOT_WITH_CACHE)
    generate(server, DOCUMENT)
    generate(server, UNRELATED)  # the document's state goes to the cache
    shared = common_prefix(tokens(vocab, DOCUMENT), tokens(vocab, variant))
    assert 0 < shared < len(tokens(vocab, DOCUMENT)) - 10

    before = server.engine_stats()
    answer = generate(server, variant)
    after = server.engine_stats()
    assert after.prompt_reuse.ram_tokens - before.prompt_reuse.ram_tokens == shared
    evaluated = after.prompt_tokens_evaluated - before.prompt_tokens_evaluated
    assert evaluated == answer["usage"]["prompt_tokens"] - shared


def chat_all(server: RunningServer, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send every body at once, each on its own connection."""
    import httpx

    barrier = threading.Barrier(len(bodies))

    def send(body: dict[str, Any]) -> dict[str, Any]:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            barrier.wait()
            reply = client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            result: dict[str, Any] = reply.json()
            return result

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


SYSTEM_PROMPT = (
    "You are the help desk of a small library. Answer in one short sentence. The library opens "
    "at nine and closes at six, lends up to five books for three weeks, charges no fines, keeps "
    "a reading room upstairs and a children's corner downstairs, and runs a book club on the "
    "first Tuesday of each month. Ask the desk about interlibrary loans."
)
QUESTIONS = ["When does it open?", "How many books can I borrow?", "Is there a book club?"]


@pytest.mark.parametrize(
    "layout",
    [
        # Each slot's KV apart: the system prompt is copied into the slots that share it.
        {"kv_layout": "per-slot"},
        # One pool: the same cells are tagged as every sharing slot's.
        {"kv_layout": "unified"},
        {"kv_layout": "per-slot", "deterministic": True},
    ],
    ids=["per-slot", "unified", "deterministic"],
)
def test_requests_sharing_a_system_prompt_evaluate_it_once_and_answer_as_one_by_one(
    make_server: ServerFactory, vocab: Llama, layout: dict[str, Any]
) -> None:
    # Three slots of 256 cells: room for the shared system prompt and eight tokens each.
    settings = msgspec.structs.replace(TEST_SETTINGS, parallel=3, ctx=256, cache_ram=0, **layout)
    server = make_server(settings)
    bodies = [
        {
            "model": DEFAULT_ID,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question},
            ],
            "max_tokens": 8,
            "temperature": 0,
        }
        for question in QUESTIONS
    ]
    together = chat_all(server, bodies)
    stats = server.engine_stats()
    prompt_tokens = [reply["usage"]["prompt_tokens"] for reply in together]
    system_tokens = len(tokens(vocab, SYSTEM_PROMPT)) - 2  # at least this much is shared
    # The system prompt was evaluated once; each request evaluated its own question.
    assert stats.prompt_tokens_evaluated <= sum(prompt_tokens) - 2 * system_tokens
    assert stats.prompt_reuse.shared_tokens >= 2 * system_tokens
    assert stats.prompt_tokens_evaluated + stats.prompt_reuse.shared_tokens == sum(prompt_tokens)

    one_by_one = [chat_all(server, [body])[0] for body in bodies]
    for alone, batched in zip(one_by_one, together, strict=True):
        if settings.deterministic:
            assert alone["choices"][0]["message"] == batched["choices"][0]["message"]
        else:
            # Outside --deterministic, a batch may round differently than a request alone
            # (the kernels chosen for a batch of several rows differ on some CPUs), so only
            # the answer's shape is the same.
            for reply in (alone, batched):
                assert reply["choices"][0]["message"]["role"] == "assistant"
                assert reply["usage"]["completion_tokens"] >= 1

    engine = server.client.get("/system/info").json()["model"]["engine"]
    assert engine["prompt_reuse"]["shared_tokens"] == stats.prompt_reuse.shared_tokens
    metrics = {
        (sample.name, sample.labels.get("source")): sample.value
        for family in text_string_to_metric_families(server.client.get("/metrics").text)
        for sample in family.samples
    }
    reused = ("locallab_prompt_tokens_reused_total", "shared")
    assert metrics[reused] == stats.prompt_reuse.shared_tokens
    evaluated = metrics[("locallab_prompt_tokens_evaluated_total", None)]
    assert evaluated >= stats.prompt_tokens_evaluated


def test_the_prompt_cache_stays_within_its_bound_under_a_flood(
    make_server: ServerFactory,
) -> None:
    # 2 MiB holds one or two saved prompts of this model (about 23 KB a token).
    server = make_server(msgspec.structs.replace(ONE_SLOT_WITH_CACHE, cache_ram=2))
    for i in range(6):
        generate(server, f"Story number {i}. {DOCUMENT}", max_length=2)
        stats = reuse(server)
        assert stats.cache_bytes <= 2 * 1024 * 1024
    assert stats.cache_entries >= 1
    assert stats.cache_capacity_bytes == 2 * 1024 * 1024


def one_slot_server(registry: Registry, settings: Settings) -> Any:
    manager = ModelManager(registry, ModelFiles(), local_engine_opener(settings))
    return serving(app_of(settings, manager, initial_model=DEFAULT_ID))


def test_saved_prompts_on_disk_outlive_a_restart(registry: Registry, tmp_path: Path) -> None:
    settings = msgspec.structs.replace(ONE_SLOT_WITH_CACHE, prompt_cache_dir=str(tmp_path))
    with one_slot_server(registry, settings) as server:
        generate(server, DOCUMENT)
        warm = generate(server, DOCUMENT)
        generate(server, UNRELATED)  # saves the document's state, on disk too
    with one_slot_server(registry, settings) as restarted:
        assert reuse(restarted).cache_entries >= 1
        restored = generate(restarted, DOCUMENT)
        stats = restarted.engine_stats()
        assert stats.prompt_reuse.disk_tokens == restored["usage"]["prompt_tokens"] - 1
        assert stats.prompt_tokens_evaluated == 1
        assert restored["response"] == warm["response"]
