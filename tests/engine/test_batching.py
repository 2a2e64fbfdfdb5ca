"""Continuous batching: concurrent requests give what each gives alone, and slots are shared."""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from tests.conftest import (
    DEFAULT_ID,
    DETERMINISTIC_SETTINGS,
    ServerFactory,
    sse_events,
)
from tests.support.reference import Reference, across_pieces
from tests.support.servers import RunningServer

PROMPTS = [
    "Once upon a time",
    "The history of the Roman Empire",
    "Write a recipe for bread:\n",
    "The best way to learn programming is",
    "In the year 2050,",
    "Dear diary, today I",
    "Here is a list of fruits:",
    "Les élèves français aiment",
]
# Alone == batched == cached is the deterministic mode's promise; these tests hold it to it.
EIGHT_SLOTS = msgspec.structs.replace(DETERMINISTIC_SETTINGS, parallel=8)


@pytest.fixture(scope="module")
def eight_slot_server(registry: Any) -> Iterator[RunningServer]:
    from locallab_gguf.models.files import ModelFiles
    from locallab_gguf.serving.loader import local_engine_opener
    from locallab_gguf.serving.model_manager import ModelManager
    from tests.conftest import DEFAULT_ID
    from tests.support.servers import app_of, serving

    manager = ModelManager(registry, ModelFiles(), local_engine_opener(EIGHT_SLOTS))
    with serving(app_of(EIGHT_SLOTS, manager, initial_model=DEFAULT_ID)) as running:
        yield running


def generate_all(server: RunningServer, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send every body at once, each on its own connection."""
    import httpx

    barrier = threading.Barrier(len(bodies))

    def send(body: dict[str, Any]) -> dict[str, Any]:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            barrier.wait()
            reply = client.post("/generate", json=body)
            assert reply.status_code == 200, reply.text
            result: dict[str, Any] = reply.json()
            return result

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def watch_busy_slots(server: RunningServer, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        seen.append(server.engine_stats().slots_busy)
        stop.wait(0.005)


@pytest.mark.slow
def test_eight_concurrent_greedy_requests_equal_each_alone(
    eight_slot_server: RunningServer,
) -> None:
    bodies = [{"prompt": p, "max_length": 48, "temperature": 0} for p in PROMPTS]
    alone = [eight_slot_server.client.post("/generate", json=b).json() for b in bodies]
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=watch_busy_slots, args=(eight_slot_server, stop, seen))
    watcher.start()
    try:
        together = generate_all(eight_slot_server, bodies)
    finally:
        stop.set()
        watcher.join()
    assert max(seen) == 8  # they really were decoded together
    for single, concurrent_ in zip(alone, together, strict=True):
        assert concurrent_["response"] == single["response"]
        assert concurrent_["usage"] == single["usage"]


@pytest.mark.slow
def test_eight_concurrent_seeded_requests_equal_each_alone(
    eight_slot_server: RunningServer,
) -> None:
    bodies = [
        {"prompt": p, "max_length": 32, "temperature": 0.9, "top_p": 0.95, "seed": 1000 + i}
        for i, p in enumerate(PROMPTS)
    ]
    alone = [eight_slot_server.client.post("/generate", json=b).json()["response"] for b in bodies]
    together = [r["response"] for r in generate_all(eight_slot_server, bodies)]
    assert together == alone


def test_a_cancelled_request_frees_its_slot_and_leaves_the_others_alone(
    eight_slot_server: RunningServer,
) -> None:
    server = eight_slot_server
    kept = [{"prompt": p, "max_length": 40, "temperature": 0} for p in PROMPTS[:2]]
    expected = [server.client.post("/generate", json=b).json()["response"] for b in kept]
    streams = []
    with server.client.stream(
        "POST", "/generate", json={"prompt": PROMPTS[2], "max_length": 500, "stream": True}
    ) as doomed:
        lines = doomed.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        results: list[dict[str, Any]] = []
        runner = threading.Thread(target=lambda: results.extend(generate_all(server, kept)))
        runner.start()
        busy_before = server.engine_stats().slots_busy
        assert busy_before >= 1
    # The doomed stream's connection is closed here, mid-generation.
    runner.join()
    assert [r["response"] for r in results] == expected
    server.wait_until_idle(timeout=1)
    del streams


def test_next_chat_turn_reuses_the_first_turns_kv_and_gives_the_same_text(
    make_server: ServerFactory,
) -> None:
    # Without a prompt cache, so that the unrelated request below really evaluates it again.
    server = make_server(msgspec.structs.replace(DETERMINISTIC_SETTINGS, parallel=1, cache_ram=0))
    first_turn = [{"role": "user", "content": "Name three colours."}]
    first = server.client.post(
        "/chat", json={"messages": first_turn, "temperature": 0, "max_length": 40}
    ).json()
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "Which of them is the warmest?"},
    ]
    body = {"messages": second_turn, "temperature": 0, "max_length": 40}

    evaluated_before = server.engine_stats().prompt_tokens_evaluated
    reused = server.client.post("/chat", json=body).json()
    evaluated_with_reuse = server.engine_stats().prompt_tokens_evaluated - evaluated_before
    prompt_tokens = reused["usage"]["prompt_tokens"]
    # Only what follows the first turn (its prompt and its answer, all cached) was evaluated.
    first_turn_tokens = first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
    assert evaluated_with_reuse <= prompt_tokens - first_turn_tokens + 2

    # An unrelated request takes the only slot's cache; the same turn is then evaluated whole.
    server.client.post("/generate", json={"prompt": "Unrelated text", "max_length": 2})
    evaluated_before = server.engine_stats().prompt_tokens_evaluated
    fresh = server.client.post("/chat", json=body).json()
    assert server.engine_stats().prompt_tokens_evaluated - evaluated_before == prompt_tokens
    assert fresh["choices"][0]["message"] == reused["choices"][0]["message"]
    assert fresh["usage"] == reused["usage"]


@pytest.fixture(scope="module")
def server(deterministic_server: RunningServer) -> RunningServer:
    return deterministic_server


def test_stop_string_split_across_tokens(server: RunningServer) -> None:
    base = {"prompt": "Once upon a time", "max_length": 40, "temperature": 0, "stream": True}
    with server.client.stream("POST", "/generate", json=base) as reply:
        whole_pieces = sse_events(reply.iter_lines())[:-1]
    full = "".join(whole_pieces)
    # The end of one token's text and the start of the next, as this machine generates them.
    stop = across_pieces(whole_pieces)
    with server.client.stream("POST", "/generate", json={**base, "stop": stop}) as reply:
        pieces = sse_events(reply.iter_lines())[:-1]
    assert "".join(pieces) == full[: full.index(stop)]


@pytest.mark.parametrize(
    ("prompt", "forced"),
    # Chinese text uses full-width punctuation; that is the point here.
    [("Emoji party: 🐉🐉🐉🐉🐉🐉", "🐉🐉🐉"), ("中文：你好，世界。我们", "美国")],  # noqa: RUF001
)
def test_multibyte_characters_split_across_tokens_stream_whole(
    server: RunningServer, reference: Reference, prompt: str, forced: str
) -> None:
    # Free text: what this machine's model writes after the prompt, streamed and not.
    body = {"prompt": prompt, "max_length": 30, "temperature": 0}
    whole = server.client.post("/generate", json=body).json()["response"]
    with server.client.stream("POST", "/generate", json={**body, "stream": True}) as reply:
        pieces = sse_events(reply.iter_lines())[:-1]
    # llama-cpp-python may end its text with a character the 30th token only began.
    assert reference.complete(prompt, 30).text.startswith(whole)
    assert "\ufffd" not in whole
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == whole

    # Forced text: a grammar (a JSON string matching a pattern) allows only `forced`. No token
    # of the vocabulary holds a whole one of these characters, so each arrives in several.
    chat = {
        "model": DEFAULT_ID,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 30,
        "stream": True,
        "stream_options": {"include_usage": True},
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "forced",
                "schema": {"type": "string", "pattern": f"^{forced}$"},
            },
        },
    }
    with server.client.stream("POST", "/v1/chat/completions", json=chat) as reply:
        chunks = [json.loads(event) for event in sse_events(reply.iter_lines())[:-1]]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    texts = [text for text in texts if text]
    assert json.loads("".join(texts)) == forced
    assert all("\ufffd" not in text for text in texts)
    # Fewer pieces than tokens: the bytes of one character arrived in several tokens.
    assert len(texts) < chunks[-1]["usage"]["completion_tokens"]


def test_batch_endpoint_decodes_its_prompts_together(eight_slot_server: RunningServer) -> None:
    server = eight_slot_server
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=watch_busy_slots, args=(server, stop, seen))
    watcher.start()
    try:
        reply = server.client.post(
            "/generate/batch",
            json={"prompts": PROMPTS[:4], "max_length": 32, "temperature": 0},
        )
    finally:
        stop.set()
        watcher.join()
    assert reply.status_code == 200
    assert max(seen) == 4
    assert len(reply.json()["responses"]) == 4


def test_engine_reports_slots_queue_and_throughput(eight_slot_server: RunningServer) -> None:
    server = eight_slot_server
    server.client.post("/generate", json={"prompt": PROMPTS[0], "max_length": 64})
    info = server.client.get("/system/info").json()
    engine = info["model"]["engine"]
    assert engine["slots_total"] == 8
    assert engine["slots_busy"] == 0
    assert engine["queue_depth"] == 0
    assert engine["tokens_per_second"] > 0
    assert json.dumps(engine)  # plain JSON, ready for metrics
