"""Tool schemas as real clients write them: loosened to what the grammar can follow, never a
refusal of the request; refused, naming the tool and the field, only above the engine's limits."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import ollama
import openai
import pytest

from locallab_gguf.engine.runtime.grammar import MAX_REPEAT, MAX_SCHEMA_DEPTH
from locallab_gguf.engine.tools.formats import ToolFormat
from locallab_gguf.engine.tools.grammars import fitted_parameters, tool_grammar
from locallab_gguf.engine.tools.schema_fit import ANY_VALUE, loosened
from locallab_gguf.engine.types import ToolSpec, ToolUse
from locallab_gguf.errors import InvalidRequest
from tests.conftest import DEFAULT_ID
from tests.support.servers import RunningServer

# As Claude Code writes its tools: a string of up to 512 KiB, a property described but not
# typed, keywords the grammar does not read.
CLIENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "content": {"type": "string", "maxLength": 524288, "description": "the file's text"},
        "options": {"description": "anything the tool takes"},
        "paths": {"type": "array", "items": {"type": "string"}, "maxItems": 100000},
        "mode": {"type": "string", "enum": [f"m{i}" for i in range(300)]},
        "id": {"type": "string", "pattern": "[a-z]+"},
        "count": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10},
    },
    "required": ["content"],
    "additionalProperties": False,
}


# What goes to a server: the same, less the long enum, which would fill a small context.
SENT_SCHEMA = {
    **CLIENT_SCHEMA,
    "properties": {
        name: value for name, value in CLIENT_SCHEMA["properties"].items() if name != "mode"
    },
}


def test_a_schema_beyond_the_grammar_is_loosened_to_what_it_can_follow() -> None:
    fitted = loosened(CLIENT_SCHEMA)
    properties = fitted["properties"]
    assert properties["content"] == {"type": "string"}  # 524,288 > MAX_REPEAT: no bound
    assert properties["options"] == ANY_VALUE  # a description only: any JSON value
    assert properties["paths"] == {"type": "array", "items": {"type": "string"}}
    assert properties["mode"] == {"type": "string"}  # 300 values > MAX_ENUM
    assert properties["id"] == {"type": "string"}  # unanchored: the converter cannot read it
    assert properties["count"] == {"type": "integer"}
    assert "$schema" not in fitted and fitted["additionalProperties"] is False
    kept = {"type": "string", "maxLength": MAX_REPEAT, "pattern": "^[a-z]{2,5}$"}
    assert loosened(kept) == kept
    assert loosened({}) == ANY_VALUE and loosened(True) == ANY_VALUE


def test_the_loosened_schema_becomes_a_grammar_for_every_format() -> None:
    tool = ToolSpec(name="Write", parameters=json.dumps(CLIENT_SCHEMA))
    for tool_format in ToolFormat:
        grammar = tool_grammar(tool_format, ToolUse(tools=(tool,), mode="required"))
        assert grammar is not None and "root ::=" in grammar.gbnf


def test_limits_that_protect_the_engine_stay_and_name_the_tool_and_field() -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(MAX_SCHEMA_DEPTH):
        deep = {"type": "object", "properties": {"x": deep}}
    tool = ToolSpec(name="Deep", parameters=json.dumps(deep), where="tools[3].input_schema")
    with pytest.raises(InvalidRequest, match=r"^tools\[3\]\.input_schema \(Deep\): .*nests"):
        fitted_parameters(3, tool)


def _deep_schema() -> dict[str, Any]:
    """Nested past the schema limit, within the limit on request bodies."""
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH // 2 + 1):
        deep = {"type": "object", "properties": {"x": deep}}
    return deep


def test_each_surface_takes_the_client_schema_and_names_its_own_field_when_refusing(
    server: RunningServer,
) -> None:
    """The same schema through OpenAI, Anthropic and Ollama: answered; a schema too deep is
    refused in each API's own terms."""
    question = [{"role": "user", "content": "Write hello into notes.txt"}]
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    function = {"name": "Write", "description": "Write a file", "parameters": SENT_SCHEMA}
    done = oai.chat.completions.create(
        model=DEFAULT_ID,
        messages=question,  # type: ignore[arg-type]
        tools=[{"type": "function", "function": function}],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=8,
    )
    assert done.choices[0].finish_reason in ("tool_calls", "length")
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    tool = {"name": "Write", "description": "Write a file", "input_schema": SENT_SCHEMA}
    message = claude.messages.create(
        model=DEFAULT_ID,
        max_tokens=8,
        messages=question,  # type: ignore[arg-type]
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "any"},
    )
    assert message.stop_reason in ("tool_use", "max_tokens")
    for block in message.content:
        if block.type == "tool_use":
            assert block.name == "Write" and isinstance(block.input, dict)
    local = ollama.Client(host=server.url)
    chat = local.chat(
        model=DEFAULT_ID,
        messages=question,
        tools=[{"type": "function", "function": function}],
        options={"num_predict": 8},
    )
    assert chat.done

    deep = _deep_schema()
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(
            model=DEFAULT_ID,
            max_tokens=5,
            messages=question,  # type: ignore[arg-type]
            tools=[tool, {"name": "Deep", "input_schema": deep}],  # type: ignore[list-item]
        )
    said = str(refused.value)
    assert "tools[1].input_schema (Deep)" in said and "function.parameters" not in said
    with pytest.raises(openai.BadRequestError) as refused_openai:
        oai.chat.completions.create(
            model=DEFAULT_ID,
            messages=question,  # type: ignore[arg-type]
            tools=[
                {"type": "function", "function": function},
                {"type": "function", "function": {"name": "Deep", "parameters": deep}},
            ],  # type: ignore[list-item]
            max_tokens=5,
        )
    assert "tools[1].function.parameters (Deep)" in str(refused_openai.value)
    for opened in (oai, claude, local):
        opened.close()
    refused_ollama = server.client.post(
        "/api/chat",
        json={
            "model": DEFAULT_ID,
            "messages": question,
            "stream": False,
            "tools": [{"type": "function", "function": {"name": "Deep", "parameters": deep}}],
        },
    )
    assert refused_ollama.status_code == 400
    assert "tools[0].function.parameters (Deep)" in refused_ollama.json()["error"]
