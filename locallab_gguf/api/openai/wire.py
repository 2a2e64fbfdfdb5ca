"""The request and response bodies of the OpenAI-compatible API under /v1.

Requests refuse unknown fields, so a feature this server lacks is never silently ignored.
OpenAI's fields that this server knows but does not implement are declared as `Unsupported`
and refused by name when set (`openai_requests.refuse_unsupported`); the SDKs send some of
them as null, which is accepted.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from locallab_gguf.api.common.fields import (
    INT32_MAX,
    KeepAlive,
    ModelId,
    NewTokens,
    Stop,
)
from locallab_gguf.api.common.schema.constraints import (
    NULL,
    absent_or_null,
    non_empty_list,
    only,
    only_with,
    when,
)
from locallab_gguf.engine.types import MAX_TOP_LOGPROBS, FinishReason, ModelKind
from locallab_gguf.engine.types import Usage as EngineUsage

# A field of OpenAI's API that this server does not implement: accepted only when null.
Unsupported = Annotated[Any, only()]

Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
TokenId = Annotated[
    int, Meta(ge=-INT32_MAX - 1, le=INT32_MAX)
]  # checked against the vocabulary later


class StreamOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    include_usage: bool | None = None
    # OpenAI pads its chunks against length side channels; this server sends no padding.
    include_obfuscation: bool | None = None


class OpenAIRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The fields /v1/chat/completions and /v1/completions share."""

    # Rules between fields, for the OpenAPI document (api/common/schema/openapi.py).
    json_schema_rules: ClassVar[tuple[dict[str, Any], ...]] = (
        only_with("stream_options", "stream", True),
    )

    model: ModelId
    # Not OpenAI's: how long the model stays loaded once idle, as in Ollama ("5m", 0, -1).
    keep_alive: KeepAlive = None
    max_tokens: NewTokens | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    stop: Stop = None
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | None = None  # OpenAI's int64
    # Not OpenAI's: false turns speculative decoding off for this request.
    speculative: bool | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    # token id -> bias; -100 bans the token, 100 all but forces it.
    logit_bias: (
        Annotated[
            dict[TokenId, Annotated[float, Meta(ge=-100.0, le=100.0)]],
            Meta(extra_json_schema={"propertyNames": {"pattern": r"^-?[0-9]+$"}}),
        ]
        | None
    ) = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[Annotated[int, Meta(ge=1)] | None, only(1)] = None
    service_tier: Annotated[Any, only("auto", "default")] = None
    metadata: Unsupported = None
    store: Annotated[Any, only(False)] = None


class ContentPart(msgspec.Struct, kw_only=True):
    """One part of a message's content; only `text` parts are supported."""

    type: str
    text: str | None = None


# Decoded leniently (a function message, an image part) to be refused by name.
_ACCEPTED_ROLES = {"enum": ["system", "developer", "user", "assistant", "tool"]}
_TEXT_PART = {
    "required": ["type", "text"],
    "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}},
}
_ROLE_TOOL = {"properties": {"role": {"const": "tool"}}, "required": ["role"]}
_ROLE_ASSISTANT = {"properties": {"role": {"const": "assistant"}}, "required": ["role"]}
_MAKES_CALLS = {"allOf": [_ROLE_ASSISTANT, non_empty_list("tool_calls")]}
_HAS_CONTENT = {"required": ["content"], "properties": {"content": {"not": NULL}}}
_ANSWERS_A_CALL = {
    "required": ["tool_call_id"],
    "properties": {"tool_call_id": {"type": "string"}},
}
# Content may be null only on an assistant message that makes tool calls; a tool message
# names the call it answers, and only it does; only assistant messages make calls. (That the
# id names a call of an earlier assistant message, no schema can state: the handler checks.)
_MESSAGE_RULES = {
    "required": ["role"],
    "allOf": [
        {"if": _MAKES_CALLS, "then": {}, "else": _HAS_CONTENT},
        {"if": _ROLE_TOOL, "then": _ANSWERS_A_CALL, "else": absent_or_null("tool_call_id")},
        {
            "if": _ROLE_ASSISTANT,
            "then": {},
            "else": {"properties": {"tool_calls": {"anyOf": [NULL, {"maxItems": 0}]}}},
        },
    ],
}

ToolName = Annotated[str, Meta(min_length=1, max_length=64, pattern="^[a-zA-Z0-9_.-]+$")]


class FunctionCallBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    arguments: str  # JSON text


class ToolCallBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: Annotated[str, Meta(min_length=1)]
    type: Literal["function"] = "function"
    function: FunctionCallBody


class ChatMessageBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Annotated[
        Literal["system", "developer", "user", "assistant", "tool", "function"],
        Meta(extra_json_schema={"allOf": [_ACCEPTED_ROLES]}),
    ]
    content: str | list[Annotated[ContentPart, Meta(extra_json_schema=_TEXT_PART)]] | None = None
    name: Unsupported = None
    tool_calls: list[ToolCallBody] | None = None  # assistant messages
    tool_call_id: Annotated[
        str | None,
        Meta(description="tool messages: the id of a call of an earlier assistant message"),
    ] = None
    # Sent back by clients that keep a reasoning model's thinking; not shown to the model.
    reasoning_content: str | None = None
    function_call: Unsupported = None
    refusal: Unsupported = None
    audio: Unsupported = None


class TextFormat(msgspec.Struct, tag_field="type", tag="text", forbid_unknown_fields=True):
    pass


class JsonObjectFormat(
    msgspec.Struct, tag_field="type", tag="json_object", forbid_unknown_fields=True
):
    pass


class JsonSchemaSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    schema: dict[str, Any] | None = None  # None: any JSON object
    strict: bool | None = None  # the output always follows the schema, strict or not


class JsonSchemaFormat(
    msgspec.Struct, tag_field="type", tag="json_schema", forbid_unknown_fields=True
):
    json_schema: JsonSchemaSpec


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


class FunctionDefinition(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema; None: no arguments
    strict: bool | None = None  # calls always follow the schema, strict or not


class ToolDefinition(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str


class NamedToolChoice(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class ChatCompletionRequest(OpenAIRequest, kw_only=True, forbid_unknown_fields=True):
    json_schema_rules: ClassVar[tuple[dict[str, Any], ...]] = (
        *OpenAIRequest.json_schema_rules,
        only_with("top_logprobs", "logprobs", True),
        # tool_choice other than none names a tool to call, so it needs tools.
        when(
            {
                "properties": {"tool_choice": {"not": {"enum": [None, "none"]}}},
                "required": ["tool_choice"],
            },
            non_empty_list("tools"),
        ),
        # A JSON answer cannot be shaped while the answer may be a tool call.
        when(
            {
                "properties": {
                    "response_format": {
                        "properties": {"type": {"enum": ["json_object", "json_schema"]}},
                        "required": ["type"],
                    },
                    "tools": {"type": "array", "minItems": 1},
                },
                "required": ["response_format", "tools"],
            },
            {"properties": {"tool_choice": {"const": "none"}}, "required": ["tool_choice"]},
        ),
    )

    messages: Annotated[
        list[Annotated[ChatMessageBody, Meta(extra_json_schema=_MESSAGE_RULES)]], Meta(min_length=1)
    ]
    max_completion_tokens: NewTokens | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[
        list[ToolDefinition] | None,
        Meta(description="each tool with its own name"),
    ] = None
    tool_choice: Annotated[
        ToolChoice | None,
        Meta(description="a named tool is one of `tools`"),
    ] = None
    parallel_tool_calls: bool | None = None  # None: true, as OpenAI
    # How thinking (<think>...</think>) is returned: apart in reasoning_content (auto,
    # deepseek), or left in content (none). As llama.cpp's server names them.
    reasoning_format: Literal["auto", "deepseek", "none"] | None = None
    # Extra variables for the model's chat template, e.g. {"enable_thinking": false}.
    chat_template_kwargs: dict[str, Any] | None = None
    functions: Unsupported = None
    function_call: Annotated[Any, only("none")] = None
    audio: Unsupported = None
    modalities: Annotated[Any, only(["text"])] = None
    prediction: Unsupported = None
    # Passed to the chat template as reasoning_effort, for templates that use it.
    reasoning_effort: Annotated[str, Meta(max_length=32)] | None = None
    # Names the conversation: its requests keep to the slot that holds its prefix.
    prompt_cache_key: Annotated[str, Meta(max_length=1024)] | None = None
    web_search_options: Unsupported = None
    verbosity: Unsupported = None


_PROMPT_TEXT = {"type": "string", "minLength": 1}
_ONE_PROMPT = {
    "anyOf": [_PROMPT_TEXT, {"type": "array", "items": _PROMPT_TEXT, "minItems": 1, "maxItems": 1}]
}


# The legacy completions API's own bound on `logprobs`, below the chat API's top_logprobs.
COMPLETION_MAX_LOGPROBS = 5


class CompletionRequest(OpenAIRequest, kw_only=True, forbid_unknown_fields=True):
    # A string, or a list holding one string; lists of token ids are refused by name.
    prompt: Annotated[str | list[Any], Meta(extra_json_schema={"allOf": [_ONE_PROMPT]})]
    logprobs: Annotated[int, Meta(ge=0, le=COMPLETION_MAX_LOGPROBS)] | None = None
    echo: Annotated[bool | None, only(False)] = None
    best_of: Annotated[Any, only(1)] = None
    suffix: Annotated[Any, only("")] = None


ModelState = Literal["loaded", "loading", "downloading", "unloaded", "failed"]


class OpenAIModel(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Not OpenAI's: whether the model is resident; a request for any of them loads it.
    state: ModelState
    # Not OpenAI's: what the model is for ("chat", "embedding", "reranker"), the context of
    # each request in tokens (when loaded or configured), and the model an alias means.
    kind: ModelKind = "chat"
    context_length: int | None = None
    alias_of: str | None = None


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct):
    content: list[TokenLogprob]
    refusal: None = None


class AssistantMessageBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"]
    content: str | None  # null when the answer is only tool calls
    refusal: None
    tool_calls: list[ToolCallBody] | None = None
    reasoning_content: str | None = None


class ChatCompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    message: AssistantMessageBody
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReason


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int  # prompt tokens found in a cache, not evaluated


class CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int  # completion tokens spent thinking


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails

    @classmethod
    def of(cls, usage: EngineUsage) -> Usage:
        return cls(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
            PromptTokensDetails(usage.cached_tokens),
            CompletionTokensDetails(usage.reasoning_tokens),
        )


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class FunctionChunk(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallChunk(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A call's first chunk carries its id, type and name; later ones its arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionChunk


class ChunkDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallChunk] | None = None


class ChatChunkChoice(msgspec.Struct, kw_only=True):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None  # only on the extra last chunk of include_usage


class CompletionLogprobs(msgspec.Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class Completion(msgspec.Struct, kw_only=True):
    """A whole completion, and also each chunk of a streamed one (as OpenAI sends them)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail
