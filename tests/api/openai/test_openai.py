"""/v1/models, /v1/chat/completions and /v1/completions, with the official openai client."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_ID, sse_events
from tests.support.reference import Reference, word_inside
from tests.support.servers import RunningServer

QUESTION: list[Any] = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
]


@pytest.fixture(scope="module")
def server(deterministic_server: RunningServer) -> RunningServer:
    """These tests compare generations with each other: they need the deterministic mode."""
    return deterministic_server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="any", max_retries=0) as client:
        yield client


def refusal(error: openai.APIStatusError) -> dict[str, Any]:
    body = error.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    detail: dict[str, Any] = body["error"]
    return detail


def test_models_lists_the_registry_with_each_models_state(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert models[0].id == DEFAULT_ID and len(models) >= 7
    assert {model.object for model in models} == {"model"}
    states = {model.id: model.model_extra["state"] for model in models}  # type: ignore[index]
    assert states[DEFAULT_ID] == "loaded"
    assert set(states.values()) <= {"loaded", "unloaded", "loading", "downloading", "failed"}
    assert client.models.retrieve(DEFAULT_ID).id == DEFAULT_ID
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert refusal(missing.value)["code"] == "model_not_found"


def test_greedy_chat_completion_answers_like_the_chat_endpoint(
    client: openai.OpenAI, server: RunningServer, reference: Reference
) -> None:
    expected = reference.chat(QUESTION)
    reply = client.chat.completions.create(model=DEFAULT_ID, messages=QUESTION, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == DEFAULT_ID
    [choice] = reply.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert choice.logprobs is None
    assert reply.usage is not None
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == tuple(
        expected.usage.values()
    )
    local = server.client.post("/chat", json={"messages": QUESTION, "temperature": 0}).json()
    assert local["choices"][0]["message"]["content"] == choice.message.content


def test_streamed_chat_sends_role_content_finish_and_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=DEFAULT_ID, messages=QUESTION, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=DEFAULT_ID,
            messages=QUESTION,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    *content, usage_chunk = chunks
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and whole.usage is not None
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    streamed = [getattr(usage_chunk.usage, name) for name in counts]
    assert streamed == [getattr(whole.usage, name) for name in counts]
    # The same prompt again: all of it but its last token was still in a slot.
    details = usage_chunk.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == whole.usage.prompt_tokens - 1
    assert all(chunk.usage is None for chunk in content)


def test_stream_ends_with_done_and_has_no_usage_unless_asked(server: RunningServer) -> None:
    body = {"model": DEFAULT_ID, "messages": QUESTION, "temperature": 0, "stream": True}
    whole = server.client.post("/v1/chat/completions", json={**body, "stream": False}).json()
    with server.client.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = sse_events(reply.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["usage"] is None for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_completions_whole_and_streamed_agree_with_generate(
    client: openai.OpenAI, server: RunningServer
) -> None:
    prompt = "Once upon a time"
    whole = client.completions.create(model=DEFAULT_ID, prompt=prompt, max_tokens=24, temperature=0)
    assert whole.object == "text_completion"
    assert whole.id.startswith("cmpl-")
    [choice] = whole.choices
    local = server.client.post(
        "/generate", json={"prompt": prompt, "max_length": 24, "temperature": 0}
    ).json()
    assert choice.finish_reason == local["finish_reason"]
    assert whole.usage is not None
    usage = whole.usage
    assert {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    } == local["usage"]
    assert choice.text == local["response"]
    streamed = list(
        client.completions.create(
            model=DEFAULT_ID,
            prompt=[prompt],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text
    assert (
        streamed[-1].usage is not None
        and streamed[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    )


def test_max_completion_tokens_and_stop_end_the_answer(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=DEFAULT_ID, messages=QUESTION, temperature=0)
    text = full.choices[0].message.content or ""
    assert full.usage is not None
    limit = max(1, full.usage.completion_tokens // 2)  # fewer tokens than the whole answer
    short = client.chat.completions.create(
        model=DEFAULT_ID, messages=QUESTION, temperature=0, max_completion_tokens=limit
    )
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == limit
    assert text.startswith(short.choices[0].message.content or "")
    legacy = client.chat.completions.create(
        model=DEFAULT_ID, messages=QUESTION, temperature=0, max_tokens=limit
    )
    assert legacy.choices[0].message.content == short.choices[0].message.content
    stop = word_inside(text)  # a stop string cut from this machine's answer
    stopped = client.chat.completions.create(
        model=DEFAULT_ID, messages=QUESTION, temperature=0, stop=[stop, "%%%%"]
    )
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_any_int64_seed_is_accepted_and_a_larger_one_refused(client: openai.OpenAI) -> None:
    for seed in (-1, -(2**63), 2**63 - 1):
        done = client.completions.create(
            model=DEFAULT_ID, prompt="The sky is", max_tokens=2, seed=seed
        )
        assert done.usage is not None
        # Sampled: the model may end its answer even sooner.
        assert done.usage.completion_tokens == 2 or done.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=DEFAULT_ID, prompt="The sky is", max_tokens=2, seed=2**63)
    assert "seed" in str(refused.value)


@pytest.mark.parametrize(
    ("field", "value"), [("max_tokens", 10**20), ("logit_bias", {str(10**20): 5})]
)
def test_numbers_beyond_any_token_count_are_400_naming_the_field(
    client: openai.OpenAI, field: str, value: object
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(
            model=DEFAULT_ID, prompt="The sky is", extra_body={"max_tokens": 2, field: value}
        )
    assert refused.value.body is not None
    assert refused.value.body["param"] == field  # type: ignore[index]


def test_a_seed_repeats_a_sample_and_every_supported_field_is_accepted(
    client: openai.OpenAI,
) -> None:
    def sample(seed: int) -> str | None:
        reply = client.chat.completions.create(
            model=DEFAULT_ID,
            messages=[{"role": "developer", "content": "Be brief."}, *QUESTION],
            temperature=1.2,
            top_p=0.95,
            seed=seed,
            max_tokens=24,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            user="tester",
            n=1,
            response_format={"type": "text"},
        )
        return reply.choices[0].message.content

    assert sample(7) == sample(7)


def test_logit_bias_bans_a_token(client: openai.OpenAI, reference: Reference) -> None:
    def answer(logit_bias: dict[str, int]) -> list[str]:
        reply = client.chat.completions.create(
            model=DEFAULT_ID, messages=QUESTION, temperature=0, logprobs=True, logit_bias=logit_bias
        )
        logprobs = reply.choices[0].logprobs
        assert logprobs is not None and logprobs.content is not None
        return [token.token for token in logprobs.content]

    free = answer({})
    # A token from the second half of this machine's greedy answer; before it, banning it
    # changes nothing.
    at, banned = next(
        (at, token_id)
        for at in range(len(free) // 2, len(free))
        if free[at] not in free[:at] and (token_id := reference.token_id(free[at])) is not None
    )
    biased = answer({str(banned): -100})
    assert biased[:at] == free[:at]
    assert free[at] not in biased


def test_json_object_format_gives_json(client: openai.OpenAI, reference: Reference) -> None:
    messages: list[Any] = [
        {
            "role": "user",
            "content": "Give the name and country of the capital of France as a JSON object.",
        }
    ]
    reply = client.chat.completions.create(
        model=DEFAULT_ID,
        messages=messages,
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    content = reply.choices[0].message.content or ""
    # llama-cpp-python's own json_object answer on this machine: the same JSON grammar.
    expected = reference.chat(messages, 200, json_object=True)
    assert (content, reply.choices[0].finish_reason) == (expected.text, expected.finish_reason)
    assert content.startswith("{")
    # Whether the model closes the object within 200 tokens depends on the CPU's arithmetic
    # (some machines repeat keys to the end); test_json_schema_format_gives_json_that_follows_
    # the_schema bounds the answer and always parses it.
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_json_schema_format_gives_json_that_follows_the_schema(client: openai.OpenAI) -> None:
    # Bounded, so the answer ends within max_tokens whatever the model would ramble.
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "enum": ["France", "Germany", "Italy"]},
            "population": {"type": "integer"},
        },
        "required": ["city", "country", "population"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=DEFAULT_ID,
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        temperature=0,
        max_tokens=400,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": schema, "strict": True},
        },
    )
    assert reply.choices[0].finish_reason == "stop"
    answer = json.loads(reply.choices[0].message.content or "")
    assert set(answer) == {"city", "country", "population"}
    assert isinstance(answer["city"], str)
    assert answer["country"] in ("France", "Germany", "Italy")
    assert isinstance(answer["population"], int)


def test_chat_logprobs_cover_the_answer_token_by_token(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=DEFAULT_ID, messages=QUESTION, temperature=0, logprobs=True, top_logprobs=20
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert "".join(token.token for token in tokens) == choice.message.content
    assert reply.usage is not None and len(tokens) == reply.usage.completion_tokens
    for token in tokens:
        assert token.logprob <= 0.0
        assert bytes(token.bytes or []) == token.token.encode()
        assert len(token.top_logprobs) == 20  # OpenAI's most
        ranked = [top.logprob for top in token.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # Greedy: each token is the most likely one.
        assert token.top_logprobs[0].token == token.token
        assert math.isclose(token.top_logprobs[0].logprob, token.logprob)
    streamed = client.chat.completions.create(
        model=DEFAULT_ID, messages=QUESTION, temperature=0, logprobs=True, stream=True
    )
    streamed_tokens = [
        token.token
        for chunk in streamed
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content
        for token in chunk.choices[0].logprobs.content
    ]
    assert streamed_tokens == [token.token for token in tokens]


def test_completion_logprobs_have_tokens_offsets_and_alternatives(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=DEFAULT_ID, prompt="The sky is", max_tokens=6, temperature=0, logprobs=2
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens is not None and logprobs.text_offset is not None
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert logprobs.text_offset[0] == 0
    assert logprobs.text_offset[1] == len(logprobs.tokens[0])
    assert all(len(top) <= 2 for top in logprobs.top_logprobs or [])


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"store": True}, "store"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "messages[0].name"),
        ({"messages": [{"role": "function", "content": "1", "name": "f"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "tool", "content": "1", "tool_call_id": "x"}]},
            "messages[0].tool_call_id",
        ),
    ],
)
def test_unsupported_chat_fields_are_refused_by_name(
    server: RunningServer, extra: dict[str, Any], param: str
) -> None:
    body = {"model": DEFAULT_ID, "messages": QUESTION, "max_tokens": 1, **extra}
    reply = server.client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == "unsupported_parameter"
    assert error["message"].startswith(param)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"n": 3}, "n"),
    ],
)
def test_unsupported_completion_fields_are_refused_by_name(
    server: RunningServer, extra: dict[str, Any], param: str
) -> None:
    body = {"model": DEFAULT_ID, "prompt": "Hi", "max_tokens": 1, **extra}
    reply = server.client.post("/v1/completions", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/completions", {"logprobs": 6}, "logprobs"),
    ],
)
def test_more_alternatives_than_openai_allows_are_refused_by_name(
    server: RunningServer, path: str, extra: dict[str, Any], param: str
) -> None:
    body = {"model": DEFAULT_ID, "max_tokens": 1, **extra}
    body.update({"messages": QUESTION} if "chat" in path else {"prompt": "Hi"})
    reply = server.client.post(path, json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_unknown_fields_are_refused_and_null_unsupported_fields_accepted(
    client: openai.OpenAI, server: RunningServer
) -> None:
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(
            model=DEFAULT_ID, messages=QUESTION, max_tokens=1, extra_body={"mirostat": 2}
        )
    assert "mirostat" in refusal(unknown.value)["message"]
    nulls = {"tools": None, "functions": None, "tool_choice": "none", "audio": None, "n": 1}
    body = {"model": DEFAULT_ID, "messages": QUESTION, "max_tokens": 1, **nulls}
    assert server.client.post("/v1/chat/completions", json=body).status_code == 200


def test_errors_take_openai_shape(client: openai.OpenAI, server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as other_model:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    error = refusal(other_model.value)
    assert (error["param"], error["code"], error["type"]) == (
        "model",
        "model_not_found",
        "not_found_error",
    )
    assert DEFAULT_ID in error["message"]
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model=DEFAULT_ID, messages=QUESTION, temperature=3)
    assert refusal(hot.value)["param"] == "temperature"
    with pytest.raises(openai.APIStatusError) as too_long:
        client.completions.create(model=DEFAULT_ID, prompt="word " * 2000, max_tokens=1)
    assert too_long.value.status_code == 413
    assert refusal(too_long.value)["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as outside:
        client.chat.completions.create(
            model=DEFAULT_ID, messages=QUESTION, logit_bias={"999999": 5}
        )
    assert "vocabulary has 49,152 tokens" in refusal(outside.value)["message"]
    with pytest.raises(openai.BadRequestError) as schema:
        client.chat.completions.create(
            model=DEFAULT_ID,
            messages=QUESTION,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "frobnicate"}},
            },
        )
    assert "cannot be turned into a grammar" in refusal(schema.value)["message"]
    malformed = server.client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["type"] == "invalid_request_error"
    # The LocalLab routes keep their own shape.
    assert "detail" in server.client.post("/chat", json={"messages": []}).json()


def test_a_stream_left_early_frees_its_slot(server: RunningServer) -> None:
    body = {
        "model": DEFAULT_ID,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 800,
        "stream": True,
    }
    with (
        httpx.Client(base_url=server.url, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as reply,
    ):
        for line in reply.iter_lines():
            if '"content"' in line and '"role"' not in line:
                break  # the first text arrived: hang up
    server.wait_until_idle(timeout=30)
