"""Anthropic's Messages API under /v1/messages, through the official `anthropic` client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import msgspec
import pytest

from locallab_gguf.api.anthropic.errors import anthropic_error
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.servers import RunningServer

CATS = [{"role": "user", "content": "Write two sentences about cats."}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city now",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]

_opened: list[anthropic.Anthropic] = []


def client(server: RunningServer, api_key: str = "unused", **kwargs: Any) -> anthropic.Anthropic:
    opened = anthropic.Anthropic(
        base_url=server.url, api_key=api_key, max_retries=0, timeout=120, **kwargs
    )
    _opened.append(opened)
    return opened


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def test_create_answers_a_message_with_usage_that_count_tokens_agrees_with(
    server: RunningServer,
) -> None:
    message = client(server).messages.create(
        model=DEFAULT_ID, max_tokens=24, messages=CATS, extra_body={"temperature": 0}
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == DEFAULT_ID
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens <= 24
    counted = client(server).messages.count_tokens(model=DEFAULT_ID, messages=CATS)
    assert counted.input_tokens == message.usage.input_tokens


def test_max_tokens_ends_with_stop_reason_max_tokens(server: RunningServer) -> None:
    message = client(server).messages.create(
        model=DEFAULT_ID,
        max_tokens=3,
        messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
    )
    if message.stop_reason == "max_tokens":
        assert message.usage.output_tokens == 3
    else:  # the model may stop on its own within three tokens
        assert message.stop_reason == "end_turn" and message.usage.output_tokens < 3


def test_a_stop_sequence_ends_the_message_and_is_named(server: RunningServer) -> None:
    message = client(server).messages.create(
        model=DEFAULT_ID,
        max_tokens=40,
        messages=CATS,
        stop_sequences=[" "],
        extra_body={"temperature": 0},
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == " "
    assert " " not in message.content[0].text


def test_system_as_a_string_or_as_text_blocks_is_the_same_prompt(server: RunningServer) -> None:
    system = "You answer in French."
    as_string = client(server).messages.count_tokens(model=DEFAULT_ID, system=system, messages=CATS)
    as_blocks = client(server).messages.count_tokens(
        model=DEFAULT_ID, system=[{"type": "text", "text": system}], messages=CATS
    )
    plain = client(server).messages.count_tokens(model=DEFAULT_ID, messages=CATS)
    assert as_string.input_tokens == as_blocks.input_tokens
    # The template puts a default system prompt of its own where none is given.
    assert as_string.input_tokens != plain.input_tokens


def test_streaming_sends_anthropics_event_sequence_and_the_same_text(
    server: RunningServer,
) -> None:
    with client(server).messages.stream(
        model=DEFAULT_ID, max_tokens=24, messages=CATS, extra_body={"temperature": 0}
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start"  # the SDK does not pass pings on
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "text" in kinds or "content_block_delta" in kinds
    text = final.content[0].text
    assert text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens <= 24 and final.usage.input_tokens > 0


def test_raw_stream_events_are_named_and_end_without_done(server: RunningServer) -> None:
    body = {"model": DEFAULT_ID, "max_tokens": 4, "messages": CATS, "stream": True}
    with server.client.stream("POST", "/v1/messages", json=body) as reply:
        assert reply.status_code == 200
        lines = [line for line in reply.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "ping" in names and names.count("content_block_start") == 1
    assert not any("[DONE]" in line for line in lines)


def test_x_api_key_and_anthropic_version_are_accepted(make_server: ServerFactory) -> None:
    keyed = make_server(msgspec.structs.replace(TEST_SETTINGS, api_keys=("k1",)))
    answer = client(keyed, api_key="k1").messages.create(
        model=DEFAULT_ID, max_tokens=2, messages=CATS
    )
    assert answer.usage.output_tokens <= 2
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client(keyed, api_key="wrong").messages.create(
            model=DEFAULT_ID, max_tokens=2, messages=CATS
        )
    assert refused.value.status_code == 401
    assert refused.value.body["type"] == "error"  # type: ignore[index]
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    metrics = keyed.client.get("/metrics", headers={"x-api-key": "k1"}).text
    assert 'route="/v1/messages"' in metrics


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"model": DEFAULT_ID, "messages": CATS}, "max_tokens"),
        (
            {
                "model": DEFAULT_ID,
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": ""},
                            }
                        ],
                    }
                ],
            },
            "messages[0].content[0]",
        ),
        (
            {"model": DEFAULT_ID, "max_tokens": 5, "messages": CATS, "temperature": 1.5},
            "temperature",
        ),
        (
            {
                "model": DEFAULT_ID,
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "toolu_nowhere", "content": "1"}
                        ],
                    }
                ],
            },
            "tool_use_id",
        ),
        (
            {
                "model": DEFAULT_ID,
                "max_tokens": 5,
                "messages": CATS,
                "tools": [WEATHER],
                "tool_choice": {"type": "tool", "name": "no_such_tool"},
            },
            "tool_choice",
        ),
    ],
)
def test_bad_requests_are_invalid_request_errors_and_the_server_keeps_serving(
    server: RunningServer, body: dict[str, Any], error: str
) -> None:
    reply = server.client.post("/v1/messages", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["type"] == "error"
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert error in reply.json()["error"]["message"]
    ok = client(server).messages.create(model=DEFAULT_ID, max_tokens=2, messages=CATS)
    assert ok.usage.output_tokens <= 2


def test_an_unknown_model_is_not_found_error(server: RunningServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(server).messages.create(model="claude-9", max_tokens=2, messages=CATS)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_rate_limited_requests_are_rate_limit_errors(make_server: ServerFactory) -> None:
    limited = make_server(
        msgspec.structs.replace(TEST_SETTINGS, rate_limit=True, requests_per_minute=1, burst=1)
    )
    anthropic_client = client(limited)
    anthropic_client.messages.count_tokens(model=DEFAULT_ID, messages=CATS)
    with pytest.raises(anthropic.RateLimitError) as limited_out:
        anthropic_client.messages.count_tokens(model=DEFAULT_ID, messages=CATS)
    assert limited_out.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert limited_out.value.response.headers["retry-after"]


def test_a_model_not_loaded_on_a_server_that_does_not_autoload_is_overloaded_error_529(
    make_server: ServerFactory,
) -> None:
    server = make_server(
        msgspec.structs.replace(TEST_SETTINGS, autoload=False), initial_model=None, wait_for=None
    )
    with pytest.raises(anthropic.APIStatusError) as busy:
        client(server).messages.create(model=DEFAULT_ID, max_tokens=2, messages=CATS)
    assert busy.value.status_code == 529
    assert busy.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert busy.value.response.headers["retry-after"]


def test_server_failures_are_api_errors() -> None:
    response = anthropic_error(500, "the engine failed")
    assert response.status_code == 500
    body = msgspec.to_builtins(response.content)
    assert body == {"type": "error", "error": {"type": "api_error", "message": "the engine failed"}}


def test_a_forced_tool_call_is_a_tool_use_block_and_the_round_trip_answers(
    server: RunningServer,
) -> None:
    anthropic_client = client(server)
    called = anthropic_client.messages.create(
        model=DEFAULT_ID,
        max_tokens=80,
        messages=ASK_WEATHER,
        tools=[WEATHER],
        # One call: the answer ends when it is written, whatever else the model would add.
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    assert called.stop_reason == "tool_use"
    uses = [block for block in called.content if block.type == "tool_use"]
    assert uses and all(use.name == "get_weather" for use in uses)
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    answer = anthropic_client.messages.create(
        model=DEFAULT_ID,
        max_tokens=30,
        tools=[WEATHER],
        messages=[
            *ASK_WEATHER,
            {"role": "assistant", "content": [block.model_dump() for block in called.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 degrees"}
                ],
            },
        ],
        tool_choice={"type": "none"},
    )
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in answer.content] == ["text"]


def test_a_streamed_tool_call_sends_input_json_deltas_that_build_the_input(
    server: RunningServer,
) -> None:
    with client(server).messages.stream(
        model=DEFAULT_ID,
        max_tokens=80,
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events]
    assert "input_json" in kinds or any(
        event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        for event in events
    )
    assert final.stop_reason == "tool_use"
    use = next(block for block in final.content if block.type == "tool_use")
    jsonschema.validate(use.input, WEATHER["input_schema"])


def test_tools_are_counted_in_the_prompt(server: RunningServer) -> None:
    plain = client(server).messages.count_tokens(model=DEFAULT_ID, messages=ASK_WEATHER)
    with_tools = client(server).messages.count_tokens(
        model=DEFAULT_ID, messages=ASK_WEATHER, tools=[WEATHER]
    )
    assert with_tools.input_tokens > plain.input_tokens


def test_thinking_enabled_is_accepted_and_a_model_that_does_not_think_answers_in_text(
    server: RunningServer,
) -> None:
    message = client(server).messages.create(
        model=DEFAULT_ID,
        max_tokens=8,
        messages=CATS,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert {block.type for block in message.content} <= {"thinking", "text"}
