"""Anthropic's Messages requests -> the engine's."""

from __future__ import annotations

from locallab_gguf.api.anthropic.wire import (
    CountTokensRequest,
    DocumentBlock,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from locallab_gguf.engine.types import ChatMessage, GenerationRequest, SamplingParams
from locallab_gguf.errors import UnsupportedParameter


def refuse_unsupported(data: CountTokensRequest) -> None:
    if data.thinking is not None and data.thinking.type == "enabled":
        raise UnsupportedParameter(
            "thinking", f"{data.model} does not think; leave thinking unset or disabled"
        )
    if data.tools or data.tool_choice is not None:
        raise UnsupportedParameter(
            "tools", f"{data.model} does not support tools on /v1/messages here"
        )


def messages_of(data: CountTokensRequest) -> tuple[ChatMessage, ...]:
    turns: list[ChatMessage] = []
    system = _system_text(data.system)
    if system:
        turns.append(ChatMessage("system", system))
    for index, message in enumerate(data.messages):
        turns.append(ChatMessage(message.role, _content_text(index, message)))
    return tuple(turns)


def generation_of(data: MessagesRequest) -> GenerationRequest:
    """Anthropic's defaults: temperature 1, no top-p or top-k cut."""
    return GenerationRequest(
        messages=messages_of(data),
        max_tokens=data.max_tokens,
        sampling=SamplingParams(
            temperature=1.0 if data.temperature is None else data.temperature,
            top_p=1.0 if data.top_p is None else data.top_p,
            top_k=data.top_k or 0,
        ),
        stop=tuple(stop for stop in data.stop_sequences or () if stop),
    )


def count_request(data: CountTokensRequest) -> GenerationRequest:
    return GenerationRequest(messages=messages_of(data), max_tokens=1)


def _system_text(system: str | list[TextBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n".join(block.text for block in system)


def _content_text(index: int, message: MessageParam) -> str:
    if isinstance(message.content, str):
        return message.content
    texts = []
    for number, block in enumerate(message.content):
        where = f"messages[{index}].content[{number}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ThinkingBlock):
            continue  # earlier thinking may be left out of the context, as Anthropic does
        elif isinstance(block, ImageBlock | DocumentBlock):
            raise UnsupportedParameter(where, "this server has no vision models yet")
        elif isinstance(block, ToolUseBlock | ToolResultBlock):
            raise UnsupportedParameter(where, "tool use is not supported on /v1/messages here")
    return "\n".join(texts)
