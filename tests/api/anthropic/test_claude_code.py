"""Anthropic's API as Claude Code sends it, and limits beyond the context on every surface.

tests/data/claude_code_first_request.json is the first POST /v1/messages?beta=true of Claude
Code 2.1.332 (`claude -p "say hi"`), captured through a logging proxy, with the machine's
paths and ids replaced: a system message inside `messages`, adaptive thinking with display
omitted, output_config, context_management, max_tokens 128000, 12 tools whose schemas hold
maxLength 524288 and a description-only property, eight anthropic-beta values.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import ollama
import openai
import pytest

from locallab_gguf.api.anthropic.requests import messages_of
from locallab_gguf.api.anthropic.wire import CountTokensRequest
from locallab_gguf.api.common.keepalive import with_keepalive
from locallab_gguf.engine.types import ChatMessage
from locallab_gguf.models.aliases import parse_alias_flags
from locallab_gguf.models.registry import Registry
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.servers import RunningServer

FIXTURE = Path(__file__).parents[2] / "data" / "claude_code_first_request.json"
HI = [{"role": "user", "content": "say hi"}]


def captured() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FIXTURE.read_text())
    return loaded


def _shortened(value: Any, limit: int) -> Any:
    """The request with every long text cut to `limit` characters: the same fields and
    schemas, a prompt a small model reads in seconds."""
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, list):
        return [_shortened(item, limit) for item in value]
    if isinstance(value, dict):
        return {key: _shortened(item, limit) for key, item in value.items()}
    return value


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event of a text/event-stream."""
    events = []
    for block in text.split("\n\n"):
        name, data = "", []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def check_message_stream(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Anthropic's event grammar: message_start, blocks opened, filled and closed in turn,
    message_delta with a stop reason, message_stop. Returns the message_delta."""
    assert events, "no events"
    for name, data in events:
        assert name == data["type"], (name, data)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    assert names.count("message_delta") == 1 and names[-2] == "message_delta", names
    open_index: int | None = None
    next_index = 0
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index, next_index = data["index"], next_index + 1
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            assert name == "ping", name
    assert open_index is None
    delta: dict[str, Any] = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    return delta


@pytest.fixture
def claude_names(registry: Registry) -> Registry:
    """Claude Code's model names reach the default model."""
    return registry.with_aliases(parse_alias_flags([f"claude-*={DEFAULT_ID}"]))


def test_claude_codes_first_request_is_answered_with_a_well_formed_stream(
    server: RunningServer, make_server: ServerFactory, claude_names: Registry
) -> None:
    fixture = captured()
    body = _shortened(fixture["body"], 24)
    assert body["max_tokens"] >= 32000 and body["model"].startswith("claude-")
    assert any(message["role"] == "system" for message in body["messages"])
    # A context a little larger than the prompt: the request's limit is far beyond its room.
    counted = server.client.post(
        "/v1/messages/count_tokens",
        json={**{key: body[key] for key in ("messages", "system", "tools")}, "model": DEFAULT_ID},
    )
    assert counted.status_code == 200, counted.text
    prompt_tokens = counted.json()["input_tokens"]
    settings = msgspec.structs.replace(TEST_SETTINGS, ctx=prompt_tokens + 16, parallel=1)
    small = make_server(settings, registry_=claude_names)
    headers = {
        key: value
        for key, value in fixture["headers"].items()
        if key.lower() in ("anthropic-beta", "anthropic-version", "x-api-key", "content-type")
    }
    assert len(headers["anthropic-beta"].split(",")) >= 3
    with small.client.stream(
        "POST", fixture["path"], json=body, headers=headers, timeout=300
    ) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = reply.read().decode()
    events = sse(text)
    check_message_stream(events)
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == prompt_tokens


def test_system_messages_inside_messages_join_the_system_prompt_in_order(
    server: RunningServer,
) -> None:
    """The prompt the engine reads, counted: system prompt, then each system message of
    `messages` in order, as one system prompt; the other order is another prompt."""
    first, second = "Answer briefly.\n", "The user works in /tmp on Linux."
    inside = {
        "model": DEFAULT_ID,
        "system": first,
        "messages": [{"role": "system", "content": second}, *HI],
    }
    joined = {"model": DEFAULT_ID, "system": f"{first}\n\n{second}", "messages": HI}
    swapped = {"model": DEFAULT_ID, "system": f"{second}\n\n{first}", "messages": HI}

    def count(body: dict[str, Any]) -> int:
        reply = server.client.post("/v1/messages/count_tokens", json=body)
        assert reply.status_code == 200, reply.text
        tokens: int = reply.json()["input_tokens"]
        return tokens

    assert count(inside) == count(joined) != count(swapped)
    request = msgspec.convert(
        {**inside, "messages": [*inside["messages"], {"role": "system", "content": "third"}]},
        CountTokensRequest,
    )
    assert messages_of(request) == (
        ChatMessage("system", f"{first}\n\n{second}\n\nthird"),
        ChatMessage("user", "say hi"),
    )


def test_adaptive_thinking_output_config_and_betas_are_accepted(server: RunningServer) -> None:
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    message = claude.beta.messages.create(
        model=DEFAULT_ID,
        max_tokens=8,
        messages=HI,  # type: ignore[arg-type]
        betas=["interleaved-thinking-2025-05-14", "context-management-2025-06-27"],
        extra_body={
            "thinking": {"type": "adaptive", "display": "omitted"},
            "output_config": {"effort": "high"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
        },
    )
    # display "omitted": no thinking text comes back.
    assert {block.type for block in message.content} <= {"text"}
    claude.close()


def test_an_output_format_other_than_a_json_schema_is_a_400_naming_it(
    server: RunningServer,
) -> None:
    for given in ({"type": "text"}, {"type": "json_schema"}, 0):
        reply = server.client.post(
            "/v1/messages",
            json={
                "model": DEFAULT_ID,
                "max_tokens": 4,
                "messages": HI,
                "output_config": {"format": given},
            },
        )
        assert reply.status_code == 400, given
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "output_config.format" in error["message"], error["message"]


def _nearly_full(server: RunningServer, room: int) -> tuple[list[dict[str, str]], int]:
    """A chat whose prompt leaves about `room` tokens of the server's context, and that
    context."""
    listed = server.client.get("/v1/models").json()["data"]
    context = next(model["context_length"] for model in listed if model["id"] == DEFAULT_ID)
    words = 1
    while True:
        chat = [{"role": "user", "content": "hello " * words}]
        counted = server.client.post(
            "/v1/messages/count_tokens", json={"model": DEFAULT_ID, "messages": chat}
        ).json()["input_tokens"]
        if counted >= context - room:
            return chat, context
        words += max(1, (context - room - counted) // 2)


# Output that cannot end before hundreds of characters: only the context can stop it.
LONG_JSON = {"type": "string", "minLength": 1000}


@pytest.fixture
def small_context(make_server: ServerFactory) -> Iterator[RunningServer]:
    yield make_server(msgspec.structs.replace(TEST_SETTINGS, ctx=256, parallel=1))


def test_32000_new_tokens_on_a_small_context_run_to_its_end_on_every_surface(
    small_context: RunningServer,
) -> None:
    """No 400: the answer runs until the context is full and ends as cut off by length."""
    server = small_context
    chat, context = _nearly_full(server, room=12)

    def filled(prompt: int, completion: int) -> None:
        assert context - 2 <= prompt + completion <= context, (prompt, completion, context)

    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    message = claude.messages.create(
        model=DEFAULT_ID,
        max_tokens=32000,
        messages=chat,  # type: ignore[arg-type]
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": LONG_JSON}}},
    )
    assert message.stop_reason == "max_tokens"
    filled(message.usage.input_tokens, message.usage.output_tokens)
    claude.close()

    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    schema_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": LONG_JSON}}
    for limit in ("max_tokens", "max_completion_tokens", None):
        done = oai.chat.completions.create(
            model=DEFAULT_ID,
            messages=chat,  # type: ignore[arg-type]
            response_format=schema_format,  # type: ignore[arg-type]
            extra_body={} if limit is None else {limit: 32000},
        )
        assert done.choices[0].finish_reason == "length", limit
        assert done.usage is not None
        filled(done.usage.prompt_tokens, done.usage.completion_tokens)
    oai.close()

    local = ollama.Client(host=server.url)
    answer = local.chat(
        model=DEFAULT_ID, messages=chat, format=LONG_JSON, options={"num_predict": 32000}
    )
    local.close()
    assert answer.done_reason == "length"
    filled(answer.prompt_eval_count or 0, answer.eval_count or 0)

    locallab = server.client.post(
        "/generate", json={"prompt": chat[0]["content"], "max_length": 32000}
    )
    assert locallab.status_code == 200, locallab.text


def test_openai_without_a_limit_is_not_cut_at_the_servers_default(
    make_server: ServerFactory,
) -> None:
    """--default-max-tokens is LocalLab's own default; /v1 runs until the context is full."""
    server = make_server(
        msgspec.structs.replace(TEST_SETTINGS, ctx=256, parallel=1, default_max_tokens=4)
    )
    chat, _ = _nearly_full(server, room=12)
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    schema_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": LONG_JSON}}
    done = oai.chat.completions.create(
        model=DEFAULT_ID,
        messages=chat,  # type: ignore[arg-type]
        response_format=schema_format,  # type: ignore[arg-type]
    )
    assert done.usage is not None and done.usage.completion_tokens > 4
    oai.close()
    locallab = server.client.post("/generate", json={"prompt": "Tell me a story"}).json()
    assert locallab["usage"]["completion_tokens"] <= 4


def test_a_quiet_stream_gets_pings_and_closing_it_closes_the_answer() -> None:
    """While the prompt is read nothing comes: pings keep the client's watchdog quiet."""
    closed: list[bool] = []

    async def slow() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.sleep(0.35)
            yield b"second"
            await asyncio.sleep(10)
            yield b"never"
        finally:
            closed.append(True)

    async def scenario() -> list[bytes]:
        got = []
        stream = with_keepalive(slow(), b"ping", every=0.1)
        async for chunk in stream:
            got.append(chunk)
            if chunk == b"second":
                break
        await stream.aclose()
        return got

    got = asyncio.run(scenario())
    assert got[0] == b"first" and got[-1] == b"second"
    assert 2 <= got.count(b"ping") <= 4
    assert closed == [True]
