"""OpenAI's Responses API (/v1/responses) through the real server and the official openai client.

Model text is never compared with a literal: outputs are bounded by max_output_tokens or forced
by a grammar (a tool call, a JSON schema), and the checks look at structure, at events against
the final response of the same run, and at token counts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import msgspec
import openai
import pydantic
import pytest

from locallab_gguf.api.responses.requests import chat_messages, generation
from locallab_gguf.api.responses.store import ResponseStore, StoredResponse
from locallab_gguf.api.responses.wire import (
    InputText,
    MessageItem,
    ReasoningBody,
    ResponseBody,
    ResponseRequest,
    TextConfigBody,
)
from locallab_gguf.models.registry import Registry
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory, sse_events
from tests.support.servers import RunningServer

CODEX_REQUEST = Path(__file__).parents[2] / "data" / "codex_first_request.json"
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": WEATHER_SCHEMA,
    "strict": True,
}
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "mood": {"enum": ["happy", "sad"]},
    },
    "required": ["name", "mood"],
    "additionalProperties": False,
}
PERSON_FORMAT: Any = {
    "format": {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA, "strict": True}
}


@pytest.fixture
def client(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as opened:
        yield opened


def keyed_client(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def test_create_answers_a_response_object(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=DEFAULT_ID, input="Name a colour.", max_output_tokens=12, temperature=0
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == DEFAULT_ID
    messages = [item for item in response.output if item.type == "message"]
    assert len(messages) == 1 and messages[0].role == "assistant"
    assert messages[0].content[0].type == "output_text"
    assert response.output_text == messages[0].content[0].text
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert 0 <= usage.input_tokens_details.cached_tokens < usage.input_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0  # this model does not think
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        assert usage.output_tokens == 12
    else:
        assert response.status == "completed" and response.incomplete_details is None


def test_max_output_tokens_cuts_the_answer_as_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=DEFAULT_ID, input="Write a long story about a cat.", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3
    assert response.output[-1].status == "incomplete"


def test_without_max_output_tokens_only_the_context_limits_the_answer() -> None:
    # The engine ends an answer that fills its slot's context with finish_reason "length"
    # (tests/test_generation.py); here: the request asks for the whole context, not for the
    # server's --default-max-tokens, and a larger max_output_tokens is served up to it.
    messages = chat_messages([], "Be brief.")

    def limit(body: dict[str, Any]) -> int:
        data = msgspec.convert({"model": DEFAULT_ID, **body}, ResponseRequest)
        return generation(data, messages, None, context_length=1024).max_tokens

    assert limit({}) == 1024
    assert limit({"max_output_tokens": 32000}) == 1024
    assert limit({"max_output_tokens": 7}) == 7


def test_stream_sends_the_semantic_events_in_order(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=DEFAULT_ID, input="Name a colour.", max_output_tokens=12, stream=True
        )
    )
    assert [event.sequence_number for event in events] == list(range(len(events)))
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert types[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response  # type: ignore[union-attr]
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    done = [event for event in events if event.type == "response.output_text.done"]
    assert deltas == done[0].text == final.output_text
    assert final.status == types[-1].removeprefix("response.")
    created = events[0].response  # type: ignore[union-attr]
    assert created.status == "in_progress" and created.output == []
    assert created.id == final.id
    item_ids = {event.item_id for event in events if event.type == "response.output_text.delta"}
    assert item_ids == {final.output[0].id}


def test_stream_names_each_event_and_sends_no_done_marker(server: RunningServer) -> None:
    body = {"model": DEFAULT_ID, "input": "Hi", "max_output_tokens": 4, "stream": True}
    with server.client.stream("POST", "/v1/responses", json=body) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = list(reply.iter_lines())
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [json.loads(each) for each in sse_events(lines)]
    assert names == [each["type"] for each in data]


def test_stream_helper_gives_the_final_response(client: openai.OpenAI) -> None:
    # The helper wants response.completed: a bounded schema makes the answer complete.
    with client.responses.stream(
        model=DEFAULT_ID, input="Describe a person.", text=PERSON_FORMAT, store=False
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas)
    jsonschema.validate(json.loads(final.output_text), PERSON_SCHEMA)


def test_retrieve_list_input_items_and_delete(client: openai.OpenAI) -> None:
    created = client.responses.create(
        model=DEFAULT_ID,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "Hello."},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": [{"type": "input_text", "text": "Name a fruit."}]},
        ],
        max_output_tokens=6,
        metadata={"topic": "fruit"},
    )
    fetched = client.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    assert fetched.metadata == {"topic": "fruit"} and fetched.instructions == "Be brief."

    items = client.responses.input_items.list(created.id)
    texts = [item.content[0].text for item in items.data]  # type: ignore[union-attr]
    assert texts == ["Name a fruit.", "Hi.", "Hello."]  # newest first, as OpenAI lists them
    ascending = client.responses.input_items.list(created.id, order="asc", limit=2)
    assert [item.id for item in ascending.data] == [items.data[2].id, items.data[1].id]
    assert ascending.has_more

    deleted = client.responses.delete(created.id)
    assert deleted is None  # the SDK returns nothing; the body said deleted
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve(created.id)
    assert created.id in missing.value.message
    assert missing.value.body["type"] == "not_found_error"  # type: ignore[index]


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    created = client.responses.create(
        model=DEFAULT_ID, input="Hi", max_output_tokens=2, store=False
    )
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model=DEFAULT_ID, input="My name is Ada.", max_output_tokens=6)
    second = client.responses.create(
        model=DEFAULT_ID,
        previous_response_id=first.id,
        input="What is my name?",
        max_output_tokens=6,
    )
    alone = client.responses.create(model=DEFAULT_ID, input="What is my name?", max_output_tokens=1)
    assert first.usage and second.usage and alone.usage
    # The second turn's prompt holds the first's prompt and answer, then its own question.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens > alone.usage.input_tokens
    assert second.previous_response_id == first.id
    # Its input items are its own; the chain continues from it again.
    assert len(client.responses.input_items.list(second.id).data) == 1
    third = client.responses.create(
        model=DEFAULT_ID, previous_response_id=second.id, input="Thanks.", max_output_tokens=1
    )
    assert third.usage and third.usage.input_tokens > second.usage.input_tokens

    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=DEFAULT_ID, previous_response_id="resp_missing", input="Hi")
    assert "resp_missing" in missing.value.message


def test_function_call_round_trip(client: openai.OpenAI) -> None:
    called = client.responses.create(
        model=DEFAULT_ID,
        input="What is the weather in Oslo?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        store=False,
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert len(calls) == 1, called.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)

    question: Any = {"role": "user", "content": "What is the weather in Oslo?"}

    def answer(*items: Any) -> openai.types.responses.Response:
        return client.responses.create(
            model=DEFAULT_ID,
            input=[question, *items],
            tools=[WEATHER],
            tool_choice="none",
            max_output_tokens=4,
            store=False,
        )

    answered = answer(
        *[item.model_dump(exclude_none=True) for item in called.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 20}'},
    )
    unanswered = answer()
    assert answered.usage and unanswered.usage
    # The prompt held the call and its output.
    assert answered.usage.input_tokens > unanswered.usage.input_tokens + 10
    assert all(item.type == "message" for item in answered.output)


def test_function_call_stream_events(server: RunningServer) -> None:
    body = {
        "model": DEFAULT_ID,
        "input": "Weather in Oslo?",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "stream": True,
    }
    with server.client.stream("POST", "/v1/responses", json=body) as reply:
        events = [json.loads(each) for each in sse_events(reply.iter_lines())]
    types = [event["type"] for event in events]
    assert "response.function_call_arguments.delta" in types
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    deltas = "".join(
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    )
    assert deltas == done["arguments"]
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert final["output"][-1]["arguments"] == done["arguments"]


def test_a_function_in_a_namespace_is_called_and_answered_by_namespace_and_name(
    client: openai.OpenAI,
) -> None:
    tools: Any = [
        {
            "type": "namespace",
            "name": "weather_v1",
            "description": "Weather services",
            "tools": [{**WEATHER, "name": "lookup"}],
        }
    ]
    called = client.responses.create(
        model=DEFAULT_ID,
        input="Weather in Oslo?",
        tools=tools,
        tool_choice={"type": "function", "name": "weather_v1.lookup"},
        parallel_tool_calls=False,
        store=False,
    )
    call = called.output[-1]
    assert call.type == "function_call"
    assert (call.namespace, call.name) == ("weather_v1", "lookup")
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)
    answered = client.responses.create(
        model=DEFAULT_ID,
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "20 C"},
        ],
        tools=tools,
        tool_choice="none",
        max_output_tokens=1,
        store=False,
    )
    assert answered.status in ("completed", "incomplete")


def test_a_call_output_must_answer_a_call(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model=DEFAULT_ID,
            input=[{"type": "function_call_output", "call_id": "call_x", "output": "1"}],
        )
    assert refused.value.body["param"] == "input[0].call_id"  # type: ignore[index]


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=DEFAULT_ID,
        input="Describe a person.",
        text=PERSON_FORMAT,
        store=False,
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), PERSON_SCHEMA)
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"


def test_images_are_refused_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model=DEFAULT_ID,
            input=[
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}],
                }
            ],
        )
    assert refused.value.body["param"] == "input[0].content[0]"  # type: ignore[index]
    assert "input_image" in refused.value.message


def test_sealed_reasoning_comes_back_and_a_changed_one_is_refused(
    server: RunningServer, client: openai.OpenAI
) -> None:
    sealed = server.services.responses.seal.seal("The user wants a colour.")
    conversation: list[Any] = [
        {"role": "user", "content": "Name a colour."},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": sealed},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another."},
    ]
    response = client.responses.create(
        model=DEFAULT_ID,
        input=conversation,
        store=False,
        include=["reasoning.encrypted_content"],
        max_output_tokens=2,
    )
    assert response.status in ("completed", "incomplete")

    changed = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    conversation[1] = {**conversation[1], "encrypted_content": changed}
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=DEFAULT_ID, input=conversation, store=False)
    assert refused.value.body["param"] == "input[1].encrypted_content"  # type: ignore[index]


# A ChatML template that shows an assistant turn's reasoning and opens the new turn with
# <think>, as thinking models' templates do: whatever the model writes is its reasoning (the
# default model never closes the tag), so reasoning items come out on any CPU.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


@pytest.fixture
def thinking_server(make_server: ServerFactory, registry: Registry) -> RunningServer:
    spec = msgspec.structs.replace(registry.get(DEFAULT_ID), chat_template=THINKING_TEMPLATE)
    return make_server(registry_=msgspec.structs.replace(registry, models={DEFAULT_ID: spec}))


def test_reasoning_is_streamed_sealed_and_used_when_it_comes_back(
    thinking_server: RunningServer,
) -> None:
    body: dict[str, Any] = {
        "model": DEFAULT_ID,
        "input": "Name a colour.",
        "max_output_tokens": 6,
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "stream": True,
    }
    with thinking_server.client.stream("POST", "/v1/responses", json=body) as reply:
        events = [json.loads(each) for each in sse_events(reply.iter_lines())]
    types = [event["type"] for event in events]
    assert types[2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
    ]
    final = events[-1]["response"]
    reasoning = final["output"][0]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == []
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert reasoning["content"] == [{"type": "reasoning_text", "text": deltas}]
    assert reasoning["encrypted_content"]

    with keyed_client(thinking_server, "unused") as client:

        def prompt_tokens(*items: Any) -> int:
            response = client.responses.create(
                model=DEFAULT_ID,
                input=[
                    {"role": "user", "content": "Name a colour."},
                    *items,
                    {"role": "assistant", "content": "Blue."},
                    {"role": "user", "content": "Another."},
                ],
                store=False,
                max_output_tokens=1,
            )
            assert response.usage is not None
            return response.usage.input_tokens

        # Sent back as it came (content dropped, as Codex sends it): the sealed text is read.
        sealed_only = {
            key: reasoning[key] for key in ("type", "id", "summary", "encrypted_content")
        }
        assert prompt_tokens(sealed_only) > prompt_tokens()


def test_stored_responses_belong_to_their_key(make_server: ServerFactory) -> None:
    settings = msgspec.structs.replace(TEST_SETTINGS, api_keys=("key-one", "key-two"))
    server = make_server(settings)
    with keyed_client(server, "key-one") as one, keyed_client(server, "key-two") as two:
        created = one.responses.create(model=DEFAULT_ID, input="Hi", max_output_tokens=2)
        assert one.responses.retrieve(created.id).id == created.id
        with pytest.raises(openai.NotFoundError):
            two.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            two.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            two.responses.create(
                model=DEFAULT_ID, previous_response_id=created.id, input="Hi", max_output_tokens=1
            )
        with pytest.raises(openai.NotFoundError):
            two.responses.input_items.list(created.id)
        one.responses.delete(created.id)


def test_the_oldest_response_is_evicted(make_server: ServerFactory) -> None:
    server = make_server(msgspec.structs.replace(TEST_SETTINGS, responses_max=2))
    with keyed_client(server, "unused") as client:
        ids = [
            client.responses.create(model=DEFAULT_ID, input="Hi", max_output_tokens=1).id
            for _ in range(3)
        ]
        with pytest.raises(openai.NotFoundError) as evicted:
            client.responses.retrieve(ids[0])
        assert "evicted" in evicted.value.message
        assert [client.responses.retrieve(each).id for each in ids[1:]] == ids[1:]


def _stored(response_id: str, text: str) -> StoredResponse:
    message = MessageItem(
        id="msg_1", role="user", status="completed", content=[InputText(text=text)]
    )
    body = ResponseBody(
        id=response_id,
        created_at=1,
        status="completed",
        model=DEFAULT_ID,
        output=[],
        parallel_tool_calls=True,
        reasoning=ReasoningBody(),
        store=True,
        temperature=1.0,
        text=TextConfigBody(format={"type": "text"}),
        tool_choice="auto",
        tools=[],
        top_p=1.0,
    )
    return StoredResponse(response=body, owner="key:1", input_items=[message], history=[message])


def test_the_store_file_keeps_responses_and_the_seal_across_restarts(tmp_path: Path) -> None:
    path = str(tmp_path / "responses.db")
    store = ResponseStore(2, path)
    for number in range(3):
        store.put(_stored(f"resp_{number}", f"text {number}"))
    sealed = store.seal.seal("thinking")
    store.close()

    reopened = ResponseStore(2, path)
    assert reopened.get("resp_0", "key:1") is None  # evicted before the restart
    kept = reopened.get("resp_2", "key:1")
    assert kept is not None and kept.input_items == [_stored("resp_2", "text 2").input_items[0]]
    assert reopened.get("resp_2", None) is None  # still another key's
    assert reopened.seal.open(sealed, "input[0]") == "thinking"
    assert reopened.delete("resp_1", "key:1")
    reopened.close()
    assert ResponseStore(2, path).get("resp_1", "key:1") is None
    assert (tmp_path / "responses.db").stat().st_mode & 0o077 == 0


def _shortened(value: Any) -> Any:
    """Every description cut to a few words, keys and structure untouched."""
    if isinstance(value, dict):
        return {
            key: each[:40] if key == "description" and isinstance(each, str) else _shortened(each)
            for key, each in value.items()
        }
    if isinstance(value, list):
        return [_shortened(each) for each in value]
    return value


def _codex_request() -> dict[str, Any]:
    """Codex CLI's first request as captured (tests/data), its long texts cut down so the
    prompt fits a test server's small context, and its answer bounded so the test is short on
    any CPU; every field, item kind, tool and schema is kept."""
    body: dict[str, Any] = json.loads(CODEX_REQUEST.read_text())
    body["model"] = DEFAULT_ID
    body["tools"] = _shortened(body["tools"])
    for item in body["input"]:
        for part in item.get("content", []):
            part["text"] = part["text"][:120]
    body["max_output_tokens"] = 48
    return body


def test_a_request_shaped_like_codex_first_is_answered_with_a_well_formed_stream(
    make_server: ServerFactory,
) -> None:
    # Its tool schemas alone are over 2,000 tokens: more than the shared server's context.
    server = make_server(msgspec.structs.replace(TEST_SETTINGS, ctx=3072, parallel=1))
    body = _codex_request()
    kinds = {tool["type"] for tool in body["tools"]}
    assert {"function", "namespace", "web_search"} <= kinds
    assert body["stream"] is True and body["store"] is False
    with server.client.stream("POST", "/v1/responses", json=body) as reply:
        assert reply.status_code == 200, reply.read()
        events = [json.loads(each) for each in sse_events(reply.iter_lines())]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    opened = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    closed = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert opened == closed == list(range(len(events[-1]["response"]["output"])))


def test_hosted_tools_are_left_out_not_refused(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=DEFAULT_ID,
        input="Hi",
        tools=[{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}],
        max_output_tokens=2,
        store=False,
    )
    assert response.status in ("completed", "incomplete")


def test_ollama_version_is_one_codex_accepts(server: RunningServer) -> None:
    reply = server.client.get("/api/version")
    assert reply.status_code == 200
    major, minor, patch = (int(part) for part in reply.json()["version"].split("."))
    assert (major, minor, patch) >= (0, 13, 4)
    info = server.client.get("/system/info").json()
    assert reply.headers["x-locallab-version"] == info["versions"]["locallab_gguf"]


def test_errors_take_openai_shape(server: RunningServer) -> None:
    reply = server.client.post("/v1/responses", json={"model": DEFAULT_ID, "input": 3})
    assert reply.status_code == 400
    assert set(reply.json()["error"]) >= {"message", "type", "param", "code"}
    missing = server.client.get("/v1/responses/resp_nothing/input_items")
    assert missing.status_code == 404 and "resp_nothing" in missing.json()["error"]["message"]
    assert server.client.delete("/v1/responses/resp_x").status_code == httpx.codes.NOT_FOUND


def test_an_agent_of_the_agents_sdk_runs_on_its_default_responses_model(
    server: RunningServer,
) -> None:
    # Imported here: the SDK takes seconds to import, which the other tests need not wait for.
    import agents
    from agents.models.openai_provider import OpenAIProvider

    class Colour(pydantic.BaseModel):
        colour: Literal["red", "green", "blue"]

    async def run() -> Any:
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key="unused", max_retries=0
        ) as client:
            # A structured output (a json_schema format) makes the answer end on any CPU.
            agent = agents.Agent(
                name="Assistant",
                instructions="Answer with a colour.",
                model=DEFAULT_ID,
                output_type=Colour,
            )
            run_config = agents.RunConfig(
                model_provider=OpenAIProvider(openai_client=client, use_responses=True),
                tracing_disabled=True,
            )
            return await agents.Runner.run(agent, "Name a colour.", run_config=run_config)

    result = asyncio.run(run())
    assert isinstance(result.final_output, Colour)
    assert result.raw_responses and all(
        each.response_id and each.response_id.startswith("resp_") for each in result.raw_responses
    )


def test_the_schema_lists_the_routes_with_their_stream_and_errors(server: RunningServer) -> None:
    paths = server.client.get("/schema/openapi.json").json()["paths"]
    create = paths["/v1/responses"]["post"]["responses"]
    assert set(create["200"]["content"]) == {"application/json", "text/event-stream"}
    assert create["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "openai.wire.ErrorBody"
    )
    for path in ("/v1/responses/{response_id}", "/v1/responses/{response_id}/input_items"):
        assert "404" in paths[path]["get"]["responses"]
    assert "404" in paths["/v1/responses/{response_id}"]["delete"]["responses"]


def test_a_repeated_request_reports_its_prompt_as_cached(client: openai.OpenAI) -> None:
    body: dict[str, Any] = {
        "model": DEFAULT_ID,
        "instructions": "Answer in one short sentence. " * 10,
        "input": "Name a month with thirty days.",
        "max_output_tokens": 4,
        "temperature": 0,
        "prompt_cache_key": "months",
    }
    first = client.responses.create(**body)
    again = client.responses.create(**body)
    assert first.usage is not None and again.usage is not None
    assert again.usage.input_tokens == first.usage.input_tokens
    # All but the last token, whose logits the answer starts from, came from the slot.
    assert again.usage.input_tokens_details.cached_tokens == again.usage.input_tokens - 1


def test_a_function_named_against_the_schema_is_refused_wherever_it_is_nested(
    server: RunningServer,
) -> None:
    # The schema holds the name of a function in any tool's `tools`; only a namespace's are
    # offered to the model, but a name the schema refuses is refused in each place.
    bad = {"type": "function", "name": "no spaces allowed"}
    for tool in (
        {"type": "namespace", "name": "ns", "tools": [bad]},
        {"type": "web_search", "tools": [bad]},
    ):
        body = {"model": DEFAULT_ID, "input": "Hi", "max_output_tokens": 1, "tools": [tool]}
        reply = server.client.post("/v1/responses", json=body)
        assert reply.status_code == 400, reply.text
        assert "tools[0].tools[0].name" in reply.json()["error"]["param"] + reply.text
    assert server.client.get("/health").json()["status"] == "healthy"
