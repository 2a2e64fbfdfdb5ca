"""Anthropic's Messages requests -> the engine's: turns, tools and thinking."""

from __future__ import annotations

import msgspec

from locallab_gguf.api.anthropic.wire import (
    CountTokensRequest,
    DocumentBlock,
    ImageBlock,
    InputBlock,
    MessagesRequest,
    SystemBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from locallab_gguf.engine.types import (
    ChatMessage,
    ChatOptions,
    GenerationRequest,
    JsonOutput,
    SamplingParams,
    ToolCall,
    ToolChoiceMode,
    ToolSpec,
    ToolUse,
)
from locallab_gguf.errors import UnsupportedParameter


def thinking_enabled(data: CountTokensRequest) -> bool:
    """Whether the answer shows the model's thinking (Anthropic's `display: "omitted"` asks
    for thinking blocks without their text; they are left out here)."""
    thinking = data.thinking
    return (
        thinking is not None
        and thinking.type in ("enabled", "adaptive")
        and thinking.display != "omitted"
    )


def messages_of(data: CountTokensRequest) -> tuple[ChatMessage, ...]:
    turns: list[ChatMessage] = []
    system = _system_text(data)
    if system:
        turns.append(ChatMessage("system", system))
    call_ids: set[str] = set()
    for index, message in enumerate(data.messages):
        if message.role == "system":
            continue  # joined to the system prompt above
        if isinstance(message.content, str):
            turns.append(ChatMessage(message.role, message.content))
            continue
        texts: list[str] = []
        calls: list[ToolCall] = []
        results: list[ChatMessage] = []
        for number, block in enumerate(message.content):
            where = f"messages[{index}].content[{number}]"
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ThinkingBlock):
                continue  # earlier thinking may be left out of the context, as Anthropic does
            elif isinstance(block, ImageBlock | DocumentBlock):
                raise UnsupportedParameter(where, "this server has no vision models yet")
            elif isinstance(block, ToolUseBlock):
                if message.role != "assistant":
                    raise UnsupportedParameter(where, "tool_use blocks belong to the assistant")
                arguments = msgspec.json.encode(block.input).decode()
                calls.append(ToolCall(id=block.id, name=block.name, arguments=arguments))
                call_ids.add(block.id)
            elif isinstance(block, ToolResultBlock):
                if block.tool_use_id not in call_ids:
                    raise UnsupportedParameter(
                        f"{where}.tool_use_id",
                        f"{block.tool_use_id!r} is the id of no tool_use block in an earlier "
                        "assistant message",
                    )
                results.append(
                    ChatMessage("tool", _result_text(where, block), tool_call_id=block.tool_use_id)
                )
        turns.extend(results)  # the results answer the calls before this turn's own text
        if texts or calls or not results:
            turns.append(ChatMessage(message.role, "\n".join(texts), tool_calls=tuple(calls)))
    return tuple(turns)


def tool_use_of(data: CountTokensRequest) -> ToolUse | None:
    tools = data.tools or []
    choice = data.tool_choice
    if not tools:
        if choice is not None and choice.type not in ("auto", "none"):
            raise UnsupportedParameter("tool_choice", "names no tool, as the request has none")
        return None
    names: set[str] = set()
    specs = []
    for index, tool in enumerate(tools):
        if tool.type not in (None, "custom"):
            raise UnsupportedParameter(
                f"tools[{index}].type", f"server tools ({tool.type}) are not available here"
            )
        if tool.name in names:
            raise UnsupportedParameter(f"tools[{index}].name", f"a second tool is {tool.name}")
        names.add(tool.name)
        specs.append(
            ToolSpec(
                name=tool.name,
                description=tool.description,
                parameters=msgspec.json.encode(tool.input_schema).decode(),
                where=f"tools[{index}].input_schema",
            )
        )
    mode: ToolChoiceMode = "auto"
    named = None
    if choice is not None:
        if choice.type == "tool":
            if choice.name not in names:
                raise UnsupportedParameter(
                    "tool_choice.name", f"{choice.name!r} is not among the request's tools"
                )
            mode, named = "required", choice.name
        elif choice.type == "any":
            mode = "required"
        else:
            mode = choice.type
    parallel = not (choice is not None and choice.disable_parallel_tool_use)
    return ToolUse(tools=tuple(specs), mode=mode, named=named, parallel=parallel)


def generation_of(data: MessagesRequest) -> GenerationRequest:
    """Anthropic's defaults: temperature 1, no top-p or top-k cut. A `max_tokens` beyond the
    room the context leaves generates until the context is full (stop_reason max_tokens)."""
    return GenerationRequest(
        messages=messages_of(data),
        max_tokens=data.max_tokens,
        sampling=SamplingParams(
            temperature=1.0 if data.temperature is None else data.temperature,
            top_p=1.0 if data.top_p is None else data.top_p,
            top_k=data.top_k or 0,
            json_output=_json_output(data),
        ),
        stop=tuple(stop for stop in data.stop_sequences or () if stop),
        chat=_chat_options(data),
        speculative=data.speculative,
    )


def count_request(data: CountTokensRequest) -> GenerationRequest:
    return GenerationRequest(messages=messages_of(data), max_tokens=1, chat=_chat_options(data))


def _chat_options(data: CountTokensRequest) -> ChatOptions:
    effort = data.output_config.effort if data.output_config else None
    # Thinking is always read apart from the answer; it is returned only when asked for.
    return ChatOptions(tool_use=tool_use_of(data), reasoning="split", reasoning_effort=effort)


def _json_output(data: MessagesRequest) -> JsonOutput | None:
    """Anthropic's structured output, `output_config.format` of type json_schema."""
    output_format = data.output_config.format if data.output_config else None
    if output_format is None:
        return None
    return JsonOutput(schema=msgspec.json.encode(output_format.schema).decode())


def _system_text(data: CountTokensRequest) -> str:
    """The system prompt, then each system message of `messages`, in order."""
    parts = [_text_of(data.system)]
    parts += [_text_of(message.content) for message in data.messages if message.role == "system"]
    return "\n\n".join(part for part in parts if part)


def _text_of(content: str | list[SystemBlock] | list[InputBlock] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(block.text for block in content if isinstance(block, SystemBlock | TextBlock))


def _result_text(where: str, block: ToolResultBlock) -> str:
    if isinstance(block.content, str):
        return block.content
    texts = []
    for part in block.content:
        if isinstance(part, ImageBlock):
            raise UnsupportedParameter(where, "this server has no vision models yet")
        texts.append(part.text)
    return "\n".join(texts)
