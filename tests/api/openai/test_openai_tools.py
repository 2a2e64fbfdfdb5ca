"""Tool calls through /v1/chat/completions with the official openai client and the default
model, whose template knows no tools: the generic format.

Outputs are forced by the call grammars (bounded strings and arrays, and one call where a test
needs a finish reason, keep them short), so the checks hold on any CPU: they look at structure
and at schema validity, never at literal text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from tests.conftest import DEFAULT_ID
from tests.support.servers import RunningServer

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "item": {"type": "string", "maxLength": 12},
        "size": {"enum": ["small", "medium", "large"]},
        "quantity": {"type": "integer"},
        "price": {"type": "number"},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "floor": {"type": "integer"},
            },
            "required": ["city"],
        },
        "extras": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
    },
    "required": ["item", "size", "quantity", "address"],
}
ORDER: Any = {
    "type": "function",
    "function": {
        "name": "place_order",
        "description": "Order a drink to be delivered",
        "parameters": ORDER_SCHEMA,
    },
}
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA},
}
ASK_ORDER: Any = [{"role": "user", "content": "Order two small teas to Oslo."}]
ASK_WEATHER: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(deterministic_server: RunningServer) -> Iterator[openai.OpenAI]:
    # Whole and streamed answers are compared: the deterministic mode makes them one answer.
    base_url = deterministic_server.url + "/v1"
    with openai.OpenAI(base_url=base_url, api_key="any", max_retries=0) as client:
        yield client


def refused(error: pytest.ExceptionInfo[openai.BadRequestError]) -> dict[str, Any]:
    assert error.value.status_code == 400
    body: dict[str, Any] = error.value.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"
    return body


def test_required_call_is_valid_and_streams_the_same(client: openai.OpenAI) -> None:
    asked: dict[str, Any] = dict(
        model=DEFAULT_ID,
        messages=ASK_ORDER,
        tools=[ORDER, WEATHER],
        tool_choice="required",
        # One call: the number of parallel calls is unbounded by the grammar, and on some
        # CPUs the model repeats a call until max_tokens (finish_reason "length").
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=300,
    )
    reply = client.chat.completions.create(**asked)
    [choice] = reply.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls
    schemas = {"place_order": ORDER_SCHEMA, "get_weather": WEATHER_SCHEMA}
    for call in calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        assert call.function.name in schemas
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])

    chunks = list(client.chat.completions.create(**asked, stream=True))
    streamed: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.index not in streamed:
                # A call opens with its id, type and name; arguments come after.
                assert delta.id and delta.type == "function" and delta.function
                assert delta.function.name
                streamed[delta.index] = {"name": delta.function.name, "arguments": ""}
            else:
                assert delta.id is None and delta.function and delta.function.name is None
            assert delta.function is not None
            streamed[delta.index]["arguments"] += delta.function.arguments or ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.tool_calls]) > len(calls)
    whole = [{"name": c.function.name, "arguments": c.function.arguments} for c in calls]
    assert [streamed[index] for index in sorted(streamed)] == whole


def test_named_tool_choice_calls_that_tool(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=DEFAULT_ID,
        messages=ASK_ORDER,
        tools=[ORDER, WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=100,
    )
    [call] = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)


def test_tool_choice_none_never_calls(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=DEFAULT_ID,
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=12,
    )
    [choice] = reply.choices
    assert choice.message.tool_calls is None
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")


def test_agent_loop_call_result_answer(client: openai.OpenAI) -> None:
    messages: list[Any] = list(ASK_WEATHER)
    first = client.chat.completions.create(
        model=DEFAULT_ID,
        messages=messages,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=100,
    )
    calls = first.choices[0].message.tool_calls or []
    assert calls
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    for call in calls:
        result = {"temperature": 21, "sky": "clear"}
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    final = client.chat.completions.create(
        model=DEFAULT_ID,
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=16,
    )
    [choice] = final.choices
    assert choice.message.content
    assert choice.message.tool_calls is None
    assert final.usage is not None and first.usage is not None
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "tool_message_answers_no_call",
        {
            "messages": [
                *ASK_WEATHER,
                {"role": "tool", "tool_call_id": "call_nope", "content": "21"},
            ],
            "tools": [WEATHER],
        },
        "messages[1].tool_call_id",
    ),
    (
        "tool_choice_names_an_unknown_tool",
        {
            "messages": ASK_WEATHER,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "launch"}},
        },
        "tool_choice",
    ),
    (
        "tool_choice_without_tools",
        {"messages": ASK_WEATHER, "tool_choice": "required"},
        "tool_choice",
    ),
    (
        "two_tools_of_one_name",
        {"messages": ASK_WEATHER, "tools": [WEATHER, WEATHER]},
        "tools[1].function.name",
    ),
]


@pytest.mark.parametrize(
    ("request_body", "param"),
    [(body, param) for _, body, param in BAD_REQUESTS],
    ids=[name for name, _, _ in BAD_REQUESTS],
)
def test_bad_tool_requests_are_refused_by_name(
    client: openai.OpenAI, request_body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=DEFAULT_ID, max_tokens=4, **request_body)
    assert refused(error)["param"] == param


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def test_a_schema_past_the_engines_limits_is_refused_and_serving_goes_on(
    client: openai.OpenAI,
) -> None:
    # A schema the grammar cannot follow is loosened; one nested past the limit that keeps the
    # engine safe is refused, naming the tool.
    broken: Any = {"type": "function", "function": {"name": "odd", "parameters": nested(40)}}
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=DEFAULT_ID, messages=ASK_WEATHER, tools=[WEATHER, broken], max_tokens=4
        )
    assert "tools[1].function.parameters" in refused(error)["message"]
    reply = client.chat.completions.create(
        model=DEFAULT_ID, messages=ASK_WEATHER, max_tokens=2, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
