"""Keeps schemathesis' bodies within what the loaded model allows, which the schema cannot
state: the served model's id, a few new tokens (each test stays short), token ids inside
its vocabulary (logit_bias, /detokenize, /tokenize's lists). A value the schema refuses is
left as it is, so negative cases stay negative.

Bodies the schema allows (positive cases) are also made to meet the rules that no JSON
Schema can state, which the handlers check and the document describes in words: an id that
answers a tool call names a call made earlier in the same conversation, tools have distinct
names and a named tool choice is one of them, a JSON Schema given for the output or a
tool's arguments is one llama.cpp's grammar converter understands, and a prompt comes to at
least one token.
"""

from __future__ import annotations

import os
import re
from typing import Any

import schemathesis
from schemathesis import GenerationMode

from locallab_gguf.models.ids import MODEL_ID_PATTERN
from tests.support.tiny_encoders import N_EMBD as TINY_WIDTH
from tests.support.tiny_encoders import VOCABULARY_SIZE as TINY_VOCABULARY

SERVED_MODEL = "smollm2-135m-instruct"
# The routes that need an encoder get the run's tiny ones (tests/e2e/test_schema_fuzz.py).
EMBEDDING_MODEL = "tiny-embed"
RERANKER_MODEL = "tiny-rerank"
_RUN_MODELS = {SERVED_MODEL, EMBEDDING_MODEL, RERANKER_MODEL}
_MODEL_OF_ROUTE = {
    "/v1/embeddings": EMBEDDING_MODEL,
    "/api/embed": EMBEDDING_MODEL,
    "/api/embeddings": EMBEDDING_MODEL,
    "/v1/rerank": RERANKER_MODEL,
    "/rerank": RERANKER_MODEL,
}
VOCABULARY = 49_152
NEW_TOKENS = 1
INT32_MAX = 2**31 - 1
_TOKEN_ID = re.compile(r"-?[0-9]+")
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
_OLLAMA_NAME = re.compile(MODEL_ID_PATTERN.removesuffix("$") + "(?::latest)?$")
# Deleting the served model's file is refused (it ships inside a Python package), and would
# take the model away from the rest of the run; /api/delete keeps the names it is sent.
_KEEPS_ITS_NAMES = {"/api/delete"}
NOT_HERE = "not-here"  # what /api/delete is sent instead of a model the run uses
ANY_OBJECT = {"type": "object"}


# Where every answer's body is appended, for tests/test_schema_fuzz.py to scan afterwards.
BODIES_FILE = "LOCALLAB_FUZZ_BODIES"


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    bodies = os.environ.get(BODIES_FILE)
    if bodies:
        with open(bodies, "a", encoding="utf-8") as out:
            out.write(f"{case.operation.path} {response.status_code} {response.text}\n")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    path = case.operation.path
    if path in _KEEPS_ITS_NAMES:
        for field in ("model", "name"):
            value = body.get(field)
            if isinstance(value, str) and value.removesuffix(":latest") in _RUN_MODELS:
                body[field] = NOT_HERE
    else:
        names = _OLLAMA_NAME if path.startswith("/api/") else _MODEL_ID
        served = _MODEL_OF_ROUTE.get(path, SERVED_MODEL)
        for field in ("model", "model_id", "name"):
            value = body.get(field)
            if isinstance(value, str) and names.fullmatch(value):
                body[field] = served
    for name in ("max_tokens", "max_length", "max_completion_tokens"):
        value = body.get(name)
        # JSON Schema's integers include 7.0.
        whole = type(value) in (int, float) and float(value).is_integer()
        if whole and NEW_TOKENS < value <= INT32_MAX:
            body[name] = NEW_TOKENS
    bias = body.get("logit_bias")
    if isinstance(bias, dict):
        body["logit_bias"] = {_in_vocabulary(key): value for key, value in bias.items()}
    tokens = body.get("tokens")
    if path == "/detokenize" and isinstance(tokens, list):
        body["tokens"] = [_id_in_vocabulary(token) for token in tokens]
    content = body.get("content")
    if path == "/tokenize" and isinstance(content, list):
        body["content"] = [_id_in_vocabulary(item) for item in content]
    if path == "/v1/responses":
        # Without max_output_tokens a response runs until the context is full.
        body["max_output_tokens"] = NEW_TOKENS
    if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE:
        if path == "/v1/responses":
            _responses_rules(body)
        _meet_unstated_rules(body)
        _prompts_have_tokens(path, body)
        if path in _MODEL_OF_ROUTE and body.get("model") is None:
            body["model"] = _MODEL_OF_ROUTE[path]  # absent or null: the default, a chat model
        if path == "/v1/embeddings":
            body["input"] = _one_kind(_ids_in_tiny_vocabulary(body.get("input")))
        dimensions = body.get("dimensions")
        if type(dimensions) in (int, float) and float(dimensions).is_integer():
            # Vectors shorten to at most the model's own width.
            body["dimensions"] = 1 + (int(dimensions) - 1) % TINY_WIDTH


def _in_vocabulary(key: Any) -> Any:
    if (
        isinstance(key, str)
        and _TOKEN_ID.fullmatch(key)
        and -INT32_MAX - 1 <= int(key) <= INT32_MAX
    ):
        return str(abs(int(key)) % VOCABULARY)
    return key


def _ids_in_tiny_vocabulary(value: Any) -> Any:
    """Token-id inputs of /v1/embeddings (a list of ids, or of such lists) inside the tiny
    embedding model's vocabulary."""
    if isinstance(value, list):
        return [_ids_in_tiny_vocabulary(item) for item in value]
    whole = type(value) in (int, float) and float(value).is_integer()
    return int(value) % TINY_VOCABULARY if whole and value >= 0 else value


def _one_kind(value: Any) -> Any:
    """A list input of /v1/embeddings holds texts, ids or lists of ids, not a mix (its
    description says so; the schema cannot): a mixed one keeps the kind of its first item."""
    if not isinstance(value, list) or not value:
        return value
    kind = type(value[0])
    return [item for item in value if type(item) is kind] or value


def _id_in_vocabulary(token: Any) -> Any:
    # JSON Schema's integers include 7.0.
    whole = type(token) in (int, float) and float(token).is_integer()
    if whole and 0 <= token <= INT32_MAX:
        return int(token) % VOCABULARY
    return token


def _prompts_have_tokens(path: str, body: dict[str, Any]) -> None:
    """A prompt must come to at least one token, and the tokenizer drops some characters
    (an information separator such as U+001D alone is no token): each text gets one."""
    for field in ("prompt", "prompts"):
        value = body.get(field)
        if isinstance(value, str) and value:
            body[field] = value + "."
        elif isinstance(value, list):
            body[field] = [item + "." if isinstance(item, str) else item for item in value]
    # Ollama's raw prompt is the whole prompt: empty, it is no load request once a system
    # prompt is given, and nothing to continue.
    if path == "/api/generate" and body.get("raw") is True and not body.get("prompt"):
        body["prompt"] = "."


def _responses_rules(body: dict[str, Any]) -> None:
    """The Responses API's unstated rules: each function_call_output answers an earlier
    function_call, the functions of a namespace are named apart, a named tool choice names
    one of the functions, and every schema is one the grammar converter understands."""
    items = body.get("input")
    if isinstance(items, list):
        call_ids: list[str] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call" and isinstance(item.get("call_id"), str):
                call_ids.append(item["call_id"])
            elif item.get("type") == "function_call_output" and item.get("call_id") not in call_ids:
                item.update(
                    {"call_id": call_ids[0]}
                    if call_ids
                    else {"type": "message", "role": "user", "content": ""}
                )
    # Named as _tools_named_apart names them (it runs next); a namespace's functions apart.
    functions: list[dict[str, Any]] = []
    names: list[str] = []
    for index, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function":
            functions.append(tool)
            names.append(f"tool_{index}")
        elif tool.get("type") == "namespace":
            inner = [each for each in tool.get("tools") or () if isinstance(each, dict)]
            for number, function in enumerate(inner):
                if function.get("type") == "function":
                    function["name"] = f"tool_{number}"
                    functions.append(function)
                    names.append(f"tool_{index}.tool_{number}")
    for function in functions:
        if isinstance(function.get("parameters"), dict):
            function["parameters"] = ANY_OBJECT
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and names:
        choice["name"] = names[0]
    text = body.get("text")
    text_format = text.get("format") if isinstance(text, dict) else None
    if isinstance(text_format, dict) and isinstance(text_format.get("schema"), dict):
        text_format["schema"] = ANY_OBJECT


def _meet_unstated_rules(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if isinstance(messages, list):
        _openai_calls_answered(messages)
        _ollama_calls_answered(messages)
        _anthropic_calls_answered(messages)
    tools = body.get("tools")
    if isinstance(tools, list):
        _tools_named_apart(body, tools)
    _plain_schemas(body)


def _openai_calls_answered(messages: list[Any]) -> None:
    call_ids: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                call_ids.append(call["id"])
        answered = message.get("tool_call_id")
        if message.get("role") == "tool" and isinstance(answered, str) and answered not in call_ids:
            if call_ids:
                message["tool_call_id"] = call_ids[0]
            else:
                message["role"], message["tool_call_id"] = "user", None


def _ollama_calls_answered(messages: list[Any]) -> None:
    unanswered: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or "tool_call_id" in message:
            continue
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                unanswered.append(function["name"])
        if message.get("role") != "tool":
            continue
        name = message.get("tool_name")
        if name in unanswered:
            unanswered.remove(name)
        elif unanswered:
            message["tool_name"] = unanswered.pop(0)
        else:
            message["role"] = "user"


def _anthropic_calls_answered(messages: list[Any]) -> None:
    call_ids: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for number, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use" and isinstance(block.get("id"), str):
                call_ids.append(block["id"])
            elif block.get("type") == "tool_result" and block.get("tool_use_id") not in call_ids:
                if call_ids:
                    block["tool_use_id"] = call_ids[0]
                else:
                    content[number] = {"type": "text", "text": ""}


def _tools_named_apart(body: dict[str, Any], tools: list[Any]) -> None:
    names = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        named = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        if isinstance(named.get("name"), str):
            named["name"] = f"tool_{index}"
            names.append(named["name"])
    choice = body.get("tool_choice")
    if names and isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict):  # OpenAI's named choice
            function["name"] = names[0]
        elif choice.get("type") == "tool":  # Anthropic's
            choice["name"] = names[0]


def _plain_schemas(body: dict[str, Any]) -> None:
    if isinstance(body.get("format"), dict):  # Ollama
        body["format"] = ANY_OBJECT
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        spec = response_format.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            spec["schema"] = ANY_OBJECT
    for tool in body.get("tools") or ():
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("parameters"), dict):
            function["parameters"] = ANY_OBJECT
        if isinstance(tool.get("input_schema"), dict):
            tool["input_schema"] = ANY_OBJECT
