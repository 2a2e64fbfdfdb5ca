"""The request and response bodies of Anthropic's Messages API under /v1/messages.

Content is a string or a list of blocks told apart by `type`. Requests ignore unknown fields
(clients send beta fields with `anthropic-beta`); the blocks and fields this server cannot
honour (images, documents, extended thinking) are refused by name.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from locallab_gguf.api.common.fields import INT32_MAX, ModelId
from locallab_gguf.api.common.schema.constraints import is_set, non_empty_list, only, when

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class TextBlock(msgspec.Struct, tag_field="type", tag="text", kw_only=True):
    text: str
    cache_control: Any = None
    citations: Any = None


class SystemBlock(msgspec.Struct, kw_only=True):
    """A text block of the system prompt. Not a tagged Struct: decoded alone, a tagged Struct
    would take a block without its `type`, which the schema requires."""

    type: Literal["text"]
    text: str
    cache_control: Any = None
    citations: Any = None


class ImageBlock(msgspec.Struct, tag_field="type", tag="image", kw_only=True):
    source: Any = None


class DocumentBlock(msgspec.Struct, tag_field="type", tag="document", kw_only=True):
    source: Any = None


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use", kw_only=True):
    id: str
    name: str
    input: dict[str, Any]


# Blocks this server refuses by name: the schema leaves them out.
_NO_IMAGES = {"not": is_set("type", {"enum": ["image", "document"]})}


class ToolResultBlock(msgspec.Struct, tag_field="type", tag="tool_result", kw_only=True):
    tool_use_id: Annotated[
        str, Meta(description="the id of a tool_use block of an earlier assistant message")
    ]
    content: str | list[Annotated[TextBlock | ImageBlock, Meta(extra_json_schema=_NO_IMAGES)]] = ""
    is_error: bool = False


class ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking", kw_only=True):
    thinking: str
    signature: str = ""


InputBlock = TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock


_NO_TOOL_USE = {"not": is_set("type", {"const": "tool_use"})}
# tool_use blocks belong to assistant messages.
_USER_CALLS_NO_TOOL = when(
    is_set("role", {"const": "user"}),
    {"properties": {"content": {"anyOf": [{"type": "string"}, {"items": _NO_TOOL_USE}]}}},
)


class MessageParam(msgspec.Struct, kw_only=True):
    # "system": Claude Code puts its environment block there; joined to the system prompt.
    role: Literal["user", "assistant", "system"]
    content: str | list[Annotated[InputBlock, Meta(extra_json_schema=_NO_IMAGES)]]


class Metadata(msgspec.Struct, kw_only=True):
    user_id: str | None = None


class ThinkingConfig(msgspec.Struct, kw_only=True):
    """`adaptive` lets the model decide, as `enabled` does here (a model thinks or not as
    its template says); `display` "omitted" leaves the thinking out of the answer."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    display: Literal["summarized", "omitted"] | None = None


class OutputFormat(msgspec.Struct, kw_only=True):
    """Structured output: the answer is JSON that `schema` (a JSON Schema) accepts."""

    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(msgspec.Struct, kw_only=True):
    """`effort` goes to the chat template as reasoning effort (templates that know it)."""

    effort: str | None = None
    format: OutputFormat | None = None


class ToolParam(msgspec.Struct, kw_only=True):
    """A client tool; Anthropic's server tools (a `type` such as web_search_…) are refused."""

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any]
    type: Annotated[str | None, only("custom")] = None
    cache_control: Any = None


class ToolChoiceParam(msgspec.Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: Annotated[str | None, Meta(description='with type "tool": one of the tools')] = None
    disable_parallel_tool_use: bool | None = None


class CountTokensRequest(msgspec.Struct, kw_only=True):
    # Rules between fields, for the OpenAPI document (api/common/schema/openapi.py).
    json_schema_rules: ClassVar[tuple[dict[str, Any], ...]] = (
        # tool_choice any or tool asks for a tool call, so it needs tools.
        when(
            is_set("tool_choice", is_set("type", {"enum": ["any", "tool"]})),
            non_empty_list("tools"),
        ),
    )

    model: ModelId
    messages: Annotated[
        list[Annotated[MessageParam, Meta(extra_json_schema=_USER_CALLS_NO_TOOL)]],
        Meta(min_length=1),
    ]
    system: str | list[SystemBlock] | None = None
    tools: Annotated[list[ToolParam] | None, Meta(description="each with its own name")] = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    # Anthropic's server-side context editing: accepted and left alone, as nothing is cleared
    # here; the client sends the whole conversation each time anyway.
    context_management: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    max_tokens: Annotated[int, Meta(ge=1, le=INT32_MAX)]
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Meta(ge=0, le=INT32_MAX)] | None = None
    stream: bool = False
    metadata: Metadata | None = None
    # Not Anthropic's: false turns speculative decoding off for this request.
    speculative: bool | None = None


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int


class TextOut(msgspec.Struct, tag_field="type", tag="text", kw_only=True):
    text: str


class ToolUseOut(msgspec.Struct, tag_field="type", tag="tool_use", kw_only=True):
    id: str
    name: str
    input: dict[str, Any]


class ThinkingOut(msgspec.Struct, tag_field="type", tag="thinking", kw_only=True):
    thinking: str
    signature: str = ""  # this server signs nothing; clients send it back unchanged


ContentOut = TextOut | ToolUseOut | ThinkingOut


class Message(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentOut]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class CountTokensResponse(msgspec.Struct):
    input_tokens: int


# -- streaming events ----------------------------------------------------------------------


class MessageStart(msgspec.Struct, tag_field="type", tag="message_start"):
    message: Message


class ContentBlockStart(msgspec.Struct, tag_field="type", tag="content_block_start"):
    index: int
    content_block: ContentOut


class TextDeltaBody(msgspec.Struct, tag_field="type", tag="text_delta"):
    text: str


class InputJsonDelta(msgspec.Struct, tag_field="type", tag="input_json_delta"):
    partial_json: str


class ThinkingDeltaBody(msgspec.Struct, tag_field="type", tag="thinking_delta"):
    thinking: str


class ContentBlockDelta(msgspec.Struct, tag_field="type", tag="content_block_delta"):
    index: int
    delta: TextDeltaBody | InputJsonDelta | ThinkingDeltaBody


class ContentBlockStop(msgspec.Struct, tag_field="type", tag="content_block_stop"):
    index: int


class MessageDeltaBody(msgspec.Struct):
    stop_reason: StopReason | None
    stop_sequence: str | None


class OutputUsage(msgspec.Struct):
    output_tokens: int


class MessageDelta(msgspec.Struct, tag_field="type", tag="message_delta"):
    delta: MessageDeltaBody
    usage: OutputUsage


class MessageStop(msgspec.Struct, tag_field="type", tag="message_stop"):
    pass


class Ping(msgspec.Struct, tag_field="type", tag="ping"):
    pass


class ErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    message: str


class ErrorBody(msgspec.Struct, tag_field="type", tag="error"):
    error: ErrorDetail


class ModelInfo(msgspec.Struct, kw_only=True):
    """An entry of GET /v1/models in Anthropic's shape (a request with `anthropic-version`)."""

    type: Literal["model"] = "model"
    id: str
    display_name: str
    created_at: str  # RFC 3339
    # Not Anthropic's: the context of each request, in tokens, when known.
    context_length: int | None = None


class ModelInfoList(msgspec.Struct, kw_only=True):
    data: list[ModelInfo]
    has_more: bool = False
    first_id: str | None
    last_id: str | None
