"""The bodies of OpenAI's Responses API under /v1/responses, and the events of its stream.

The request refuses unknown top-level fields, so a feature this server lacks is never silently
ignored; OpenAI's fields that it accepts without using are declared here and documented in
docs/api/responses.md. Input items and tools are decoded leniently (one Struct per kind of
thing, `type` a string) because clients send items back with fields of their own (`status`,
`phase`, `id`) and tools this server cannot run; the request mapping refuses, by path, what it
cannot serve.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from locallab_gguf.api.common.fields import INT32_MAX, KeepAlive, ModelId
from locallab_gguf.api.common.schema.constraints import NULL, is_set, when

NewTokens = Annotated[int, Meta(ge=1, le=INT32_MAX, description="new tokens to generate")]
FUNCTION_NAME_PATTERN = "^[a-zA-Z0-9_.-]{1,64}$"

# What the handler serves, stated for the OpenAPI document (items and tools are decoded
# leniently so that the handler can name what it refuses; see the module docstring).
_NON_EMPTY = {"type": "string", "minLength": 1}
_TEXT_CONTENT = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {
                "required": ["type", "text"],
                "properties": {
                    "type": {"enum": ["input_text", "output_text", "text"]},
                    "text": {"type": "string"},
                },
            },
        },
    ]
}
_ITEM = {
    "anyOf": [
        {
            "required": ["role", "content"],
            "properties": {
                "type": {"enum": ["message", None]},
                "role": {"enum": ["user", "assistant", "system", "developer"]},
                "content": _TEXT_CONTENT,
            },
        },
        {
            "required": ["type", "call_id", "name"],
            "properties": {
                "type": {"const": "function_call"},
                "call_id": _NON_EMPTY,
                "name": _NON_EMPTY,
            },
        },
        {
            "required": ["type", "call_id", "output"],
            "properties": {
                "type": {"const": "function_call_output"},
                "call_id": _NON_EMPTY,
                "output": _TEXT_CONTENT,
            },
        },
        {
            "required": ["type"],
            "properties": {
                "type": {"const": "reasoning"},
                # Only as this server issued it (`include: ["reasoning.encrypted_content"]`).
                "encrypted_content": {"anyOf": [NULL, {"type": "string", "maxLength": 0}]},
            },
        },
    ],
    "description": "a message, function_call, function_call_output or reasoning item; a "
    "function_call_output answers a function_call earlier in the conversation",
}
_FUNCTION = {
    "required": ["type", "name"],
    "properties": {
        "type": {"const": "function"},
        "name": {"type": "string", "pattern": FUNCTION_NAME_PATTERN},
    },
}
_NOT_A_FUNCTION = {"properties": {"type": {"not": {"const": "function"}}}}
_NAMESPACE_TOOL = {"anyOf": [_FUNCTION, _NOT_A_FUNCTION]}
_TOOL = {
    "anyOf": [
        _FUNCTION,
        {
            "required": ["type", "name"],
            "properties": {
                "type": {"const": "namespace"},
                "name": {"type": "string", "pattern": FUNCTION_NAME_PATTERN},
            },
        },
        {"properties": {"type": {"not": {"enum": ["function", "namespace"]}}}},
    ],
    "description": "a function, a namespace of functions, or a hosted tool (left out: this "
    "server cannot run it); function names differ",
}
_HAS_FUNCTIONS = is_set(
    "tools",
    {
        "contains": {
            "anyOf": [
                _FUNCTION,
                {
                    "required": ["type", "tools"],
                    "properties": {
                        "type": {"const": "namespace"},
                        "tools": {"type": "array", "contains": _FUNCTION},
                    },
                },
            ]
        }
    },
)
_SHAPED = is_set(
    "text",
    is_set("format", is_set("type", {"enum": ["json_object", "json_schema"]})),
)
_NEEDS_SCHEMA = when(is_set("type", {"const": "json_schema"}), is_set("schema", {"type": "object"}))


class ContentPart(msgspec.Struct, kw_only=True):
    """A part of a message's content (`input_text`, `output_text`, `input_image`...) or of a
    reasoning item (`reasoning_text`, `summary_text`); only text parts are served."""

    type: str
    text: str | None = None


Content = str | list[ContentPart]


class InputItem(msgspec.Struct, kw_only=True):
    """One item of `input`: a message (`type` "message" or absent), a `function_call`, a
    `function_call_output` or a `reasoning` item. Which fields it needs depends on its type."""

    type: str | None = None
    id: str | None = None
    role: str | None = None
    content: Content | None = None
    # function_call / function_call_output
    call_id: str | None = None
    name: str | None = None
    namespace: str | None = None
    arguments: str | None = None
    output: Content | None = None
    # reasoning
    summary: list[ContentPart] | None = None
    encrypted_content: str | None = None


class ToolBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A tool: a `function` (flat: name, description, parameters, strict), a `namespace`
    holding functions, or a hosted tool (`web_search`...) that this server cannot run."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    # A namespace's functions (other kinds of tools in it are left out).
    tools: list[Annotated[ToolBody, Meta(extra_json_schema=_NAMESPACE_TOOL)]] | None = None


class FunctionChoice(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    name: str


ToolChoice = Literal["auto", "none", "required"] | FunctionChoice


class TextFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`text.format`: plain text, any JSON object, or JSON a schema accepts."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: Annotated[TextFormat, Meta(extra_json_schema=_NEEDS_SCHEMA)] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted, not used


class ReasoningConfig(msgspec.Struct, kw_only=True):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # A summary of the reasoning: accepted; this server returns the reasoning text itself.
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


Include = Literal[
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
    "message.input_image.image_url",
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
]


class ResponseRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/responses."""

    # Rules between fields, for the OpenAPI document (api/common/openapi.py): a call is asked
    # for only with functions to call, and a shaped answer only where no call may come.
    json_schema_rules: ClassVar[tuple[dict[str, Any], ...]] = (
        when(
            is_set("tool_choice", {"anyOf": [{"const": "required"}, {"type": "object"}]}),
            _HAS_FUNCTIONS,
        ),
        when({"allOf": [_SHAPED, _HAS_FUNCTIONS]}, is_set("tool_choice", {"const": "none"})),
    )

    model: ModelId
    input: str | list[Annotated[InputItem, Meta(extra_json_schema=_ITEM)]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[Annotated[ToolBody, Meta(extra_json_schema=_TOOL)]] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: NewTokens | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    include: list[Include] | None = None
    store: bool | None = None
    stream: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    # Names the conversation: its requests keep to the slot that holds its prefix.
    prompt_cache_key: Annotated[str, Meta(max_length=1024)] | None = None
    # Accepted and not used: this server has one tier, keeps its own prompt cache and never
    # truncates the input silently (a prompt too long is a 413).
    client_metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_retention: str | None = None
    truncation: Literal["disabled"] | None = None
    stream_options: dict[str, Any] | None = None
    # Not OpenAI's: how long the model stays loaded once idle, as in Ollama ("5m", 0, -1).
    keep_alive: KeepAlive = None
    # Not OpenAI's: false turns speculative decoding off for this request.
    speculative: bool | None = None


# -- The response object -------------------------------------------------------------------


class OutputText(msgspec.Struct, kw_only=True, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class InputText(msgspec.Struct, kw_only=True, tag_field="type", tag="input_text"):
    text: str


class ReasoningText(msgspec.Struct, kw_only=True, tag_field="type", tag="reasoning_text"):
    text: str


class SummaryText(msgspec.Struct, kw_only=True, tag_field="type", tag="summary_text"):
    text: str


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class MessageItem(msgspec.Struct, kw_only=True, tag_field="type", tag="message"):
    """A message: the model's (assistant, `output_text` parts) or, among stored input items,
    the client's (`input_text` parts)."""

    id: str
    role: str
    status: ItemStatus
    content: list[OutputText | InputText]


class FunctionCallItem(msgspec.Struct, kw_only=True, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus
    namespace: str | None = msgspec.field(default=None)


class FunctionCallOutputItem(
    msgspec.Struct, kw_only=True, tag_field="type", tag="function_call_output"
):
    id: str
    call_id: str
    output: str
    status: ItemStatus = "completed"


class ReasoningItem(msgspec.Struct, kw_only=True, tag_field="type", tag="reasoning"):
    id: str
    summary: list[SummaryText] = msgspec.field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: ItemStatus | None = None


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(msgspec.Struct, kw_only=True):
    reason: Literal["max_output_tokens"]


class ResponseError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class TextConfigBody(msgspec.Struct, kw_only=True):
    format: dict[str, Any]


class ReasoningBody(msgspec.Struct, kw_only=True):
    effort: str | None = None
    summary: str | None = None


ResponseStatus = Literal["completed", "incomplete", "in_progress", "failed"]


class ResponseBody(msgspec.Struct, kw_only=True):
    """The response object, as POST answers it, GET returns it and each stream event holds it."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[Item]
    parallel_tool_calls: bool
    previous_response_id: str | None = None
    reasoning: ReasoningBody
    store: bool
    temperature: float
    text: TextConfigBody
    tool_choice: Any
    tools: list[Any]
    top_p: float
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    prompt_cache_key: str | None = None


class DeletedResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class InputItemList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool
