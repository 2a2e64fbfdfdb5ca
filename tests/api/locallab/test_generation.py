"""/generate, /generate/batch and /chat against the real default model."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DEFAULT_ID, sse_events
from tests.support.reference import Reference, word_inside
from tests.support.servers import RunningServer

PROMPT = "Once upon a time"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def server(deterministic_server: RunningServer) -> RunningServer:
    """These tests compare generations with each other: they need the deterministic mode."""
    return deterministic_server


def test_greedy_generate_equals_bare_llama_cpp_python(
    server: RunningServer, reference: Reference
) -> None:
    expected = reference.complete(PROMPT, max_tokens=48)
    reply = server.client.post(
        "/generate", json={"prompt": PROMPT, "max_length": 48, "temperature": 0}
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["response"] == expected.text
    assert body["text"] == body["response"]
    assert body["model"] == DEFAULT_ID
    assert body["finish_reason"] == expected.finish_reason
    assert body["usage"] == expected.usage


def test_greedy_chat_equals_create_chat_completion(
    server: RunningServer, reference: Reference
) -> None:
    expected = reference.chat(QUESTION)
    reply = server.client.post("/chat", json={"messages": QUESTION, "temperature": 0})
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == expected.finish_reason
    # prompt_tokens is the tokenizer's count of the prompt as llama-cpp-python renders it.
    assert body["usage"] == expected.usage


def test_streamed_text_concatenates_to_the_whole_answer(server: RunningServer) -> None:
    request = {"prompt": "Write a short poem about rivers.\n", "max_length": 60, "temperature": 0}
    whole = server.client.post("/generate", json=request).json()
    with server.client.stream("POST", "/generate", json={**request, "stream": True}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = sse_events(reply.iter_lines())
    assert events[-1] == "[DONE]"
    pieces = events[:-1]
    assert len(pieces) > 10  # one event per piece, not one blob
    assert "".join(pieces) == whole["response"]
    assert "\n" in whole["response"]  # the newline case of the SSE framing was exercised


def test_chat_stream_sends_role_then_content_then_finish_with_usage(server: RunningServer) -> None:
    whole = server.client.post("/chat", json={"messages": QUESTION, "temperature": 0}).json()
    with server.client.stream(
        "POST", "/chat", json={"messages": QUESTION, "temperature": 0, "stream": True}
    ) as reply:
        events = sse_events(reply.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    content = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert content == whole["choices"][0]["message"]["content"]
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == whole["usage"]


def test_stop_string_ends_the_answer_and_is_not_returned(server: RunningServer) -> None:
    base = {"prompt": PROMPT, "max_length": 48, "temperature": 0}
    full = server.client.post("/generate", json=base).json()["response"]
    stop = word_inside(full)
    cut = server.client.post("/generate", json={**base, "stop": [stop]}).json()
    assert cut["response"] == full[: full.index(stop)]
    assert cut["finish_reason"] == "stop"


def test_max_tokens_is_an_alias_of_max_length(server: RunningServer, reference: Reference) -> None:
    reply = server.client.post(
        "/generate", json={"prompt": PROMPT, "max_tokens": 5, "temperature": 0}
    ).json()
    assert reply["usage"]["completion_tokens"] == reference.complete(PROMPT, 5).completion_tokens


def test_locallab_client_extras_are_ignored(server: RunningServer, reference: Reference) -> None:
    reply = server.client.post(
        "/generate",
        json={
            "prompt": PROMPT,
            "model_id": None,
            "max_length": 8,
            "temperature": 0,
            "do_sample": False,
            "top_k": 50,
            "repetition_penalty": 1.1,
        },
    )
    assert reply.status_code == 200
    assert (
        reply.json()["usage"]["completion_tokens"]
        == reference.complete(PROMPT, 8).completion_tokens
    )


def test_model_id_may_name_the_loaded_model(server: RunningServer) -> None:
    reply = server.client.post(
        "/generate", json={"prompt": PROMPT, "model_id": DEFAULT_ID, "max_length": 4}
    )
    assert reply.status_code == 200


def test_seeded_sampling_repeats(server: RunningServer) -> None:
    request = {"prompt": PROMPT, "max_length": 24, "temperature": 1.0, "seed": 42}
    first = server.client.post("/generate", json=request).json()["response"]
    second = server.client.post("/generate", json=request).json()["response"]
    other = server.client.post("/generate", json={**request, "seed": 7}).json()["response"]
    assert first == second
    assert first != other


def test_system_prompt_answers_through_the_chat_template(
    server: RunningServer, reference: Reference
) -> None:
    with_system = server.client.post(
        "/generate",
        json={
            "prompt": QUESTION[0]["content"],
            "system_prompt": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            "temperature": 0,
        },
    ).json()
    # That system prompt is what SmolLM2's template inserts by default, so the answer
    # matches the plain chat answer.
    assert with_system["response"] == reference.chat(QUESTION).text


def test_batch_answers_each_prompt_in_order(server: RunningServer) -> None:
    prompts = [PROMPT, "The capital of France is", "def fibonacci(n):"]
    singles = [
        server.client.post(
            "/generate", json={"prompt": p, "max_length": 16, "temperature": 0}
        ).json()
        for p in prompts
    ]
    batch = server.client.post(
        "/generate/batch", json={"prompts": prompts, "max_length": 16, "temperature": 0}
    )
    assert batch.status_code == 200
    body = batch.json()
    assert body["responses"] == [single["response"] for single in singles]
    assert body["usage"]["completion_tokens"] == sum(
        single["usage"]["completion_tokens"] for single in singles
    )
    assert body["usage"]["total_tokens"] == sum(s["usage"]["total_tokens"] for s in singles)
