"""The request and response bodies of the OpenAI-compatible API under /v1.

Requests refuse unknown fields, so a feature this server lacks is never silently ignored.
OpenAI's fields that this server knows but does not implement are declared as `Unsupported`
and refused by name when set (`openai_requests.refuse_unsupported`); the SDKs send some of
them as null, which is accepted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from locallab_gguf.api.common.fields import INT32_MAX, NewTokens, Stop, UsageBody
from locallab_gguf.engine.types import MAX_TOP_LOGPROBS, FinishReason

# A field of OpenAI's API that this server does not implement: accepted only when null (or,
# for a few, a value that asks for nothing: n = 1, store = false, ...).
Unsupported = Any

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

    model: Annotated[str, Meta(min_length=1)]
    # Not OpenAI's: how long the model stays loaded once idle, as in Ollama ("5m", 0, -1).
    keep_alive: str | float | None = None
    max_tokens: NewTokens | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    stop: Stop = None
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | None = None  # OpenAI's int64
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    # token id -> bias; -100 bans the token, 100 all but forces it.
    logit_bias: dict[TokenId, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    service_tier: Unsupported = None
    metadata: Unsupported = None
    store: Unsupported = None


class ContentPart(msgspec.Struct, kw_only=True):
    """One part of a message's content; only `text` parts are supported."""

    type: str
    text: str | None = None


class ChatMessageBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: Unsupported = None
    tool_calls: Unsupported = None
    tool_call_id: Unsupported = None
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


class ChatCompletionRequest(OpenAIRequest, kw_only=True, forbid_unknown_fields=True):
    messages: Annotated[list[ChatMessageBody], Meta(min_length=1)]
    max_completion_tokens: NewTokens | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: Unsupported = None
    tool_choice: Unsupported = None
    parallel_tool_calls: Unsupported = None
    functions: Unsupported = None
    function_call: Unsupported = None
    audio: Unsupported = None
    modalities: Unsupported = None
    prediction: Unsupported = None
    reasoning_effort: Unsupported = None
    web_search_options: Unsupported = None
    verbosity: Unsupported = None


class CompletionRequest(OpenAIRequest, kw_only=True, forbid_unknown_fields=True):
    # A string, or a list holding one string; lists of token ids are refused by name.
    prompt: str | list[Any]
    logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool | None = None
    best_of: Unsupported = None
    suffix: Unsupported = None


ModelState = Literal["loaded", "loading", "downloading", "unloaded", "failed"]


class OpenAIModel(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Not OpenAI's: whether the model is resident; a request for any of them loads it.
    state: ModelState


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


class AssistantMessageBody(msgspec.Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatCompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    message: AssistantMessageBody
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageBody


class ChunkDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


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
    usage: UsageBody | None = None  # only on the extra last chunk of include_usage


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
    usage: UsageBody | None = None


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail
