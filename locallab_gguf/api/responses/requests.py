"""A Responses request -> the engine request the chat route would make for the same chat.

Input items are first checked and put in one form (`Item`, as stored and listed by
GET .../input_items); the conversation (a previous response's items, then these) becomes chat
messages. Tools become the same `ToolUse` the chat route builds, so the engine renders them
and constrains calls with the same prompt and grammars; `text.format` becomes the same
`JsonOutput`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import msgspec

from locallab_gguf.api.responses.sealing import ReasoningSeal
from locallab_gguf.api.responses.wire import FUNCTION_NAME_PATTERN as _NAME_PATTERN
from locallab_gguf.api.responses.wire import (
    Content,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    InputItem,
    InputText,
    Item,
    MessageItem,
    OutputText,
    ReasoningItem,
    ReasoningText,
    ResponseRequest,
    ToolBody,
)
from locallab_gguf.engine.types import (
    ChatMessage,
    ChatOptions,
    GenerationRequest,
    JsonOutput,
    Role,
    SamplingParams,
    ToolCall,
    ToolSpec,
    ToolUse,
)
from locallab_gguf.errors import UnsupportedParameter

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for the system role
    "user": "user",
    "assistant": "assistant",
}
_TEXT_PARTS = {"input_text", "output_text", "text"}
# A function inside a namespace reaches the model as one name: the namespace's, this, its own.
NAMESPACE_SEPARATOR = "."


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _refuse(param: str, message: str) -> NoReturn:
    raise UnsupportedParameter(param, message)


def qualified(namespace: str | None, name: str) -> str:
    return name if namespace is None else f"{namespace}{NAMESPACE_SEPARATOR}{name}"


@dataclass
class ToolNames:
    """The functions offered to the model, by the name it calls them: a function in a
    namespace is called by its qualified name, and reported back as (namespace, name)."""

    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)

    def split(self, called: str) -> tuple[str | None, str]:
        namespace, name = self.namespaced.get(called, (None, called))
        return namespace, name


def input_items(data: ResponseRequest, seal: ReasoningSeal) -> list[Item]:
    """The request's input, checked, each item with an id."""
    if data.input is None:
        return []
    if isinstance(data.input, str):
        return [
            MessageItem(
                id=new_id("msg"),
                role="user",
                status="completed",
                content=[InputText(text=data.input)],
            )
        ]
    return [_item(f"input[{index}]", item, seal) for index, item in enumerate(data.input)]


def _item(where: str, item: InputItem, seal: ReasoningSeal) -> Item:
    kind = item.type or "message"
    if kind == "message":
        role = item.role
        if role not in _ROLES:
            _refuse(f"{where}.role", "a message's role is user, assistant, system or developer")
        if item.content is None:
            _refuse(f"{where}.content", "a message needs content")
        text = _text(f"{where}.content", item.content)
        part: OutputText | InputText = (
            OutputText(text=text) if role == "assistant" else InputText(text=text)
        )
        return MessageItem(
            id=item.id or new_id("msg"), role=role, status="completed", content=[part]
        )
    if kind == "function_call":
        if not item.call_id:
            _refuse(f"{where}.call_id", "a function_call names its call_id")
        if not item.name:
            _refuse(f"{where}.name", "a function_call names the function it calls")
        return FunctionCallItem(
            id=item.id or new_id("fc"),
            call_id=item.call_id,
            name=item.name,
            namespace=item.namespace,
            arguments=item.arguments or "{}",
            status="completed",
        )
    if kind == "function_call_output":
        if not item.call_id:
            _refuse(f"{where}.call_id", "a function_call_output names the call it answers")
        if item.output is None:
            _refuse(f"{where}.output", "a function_call_output needs its output")
        return FunctionCallOutputItem(
            id=item.id or new_id("fco"),
            call_id=item.call_id,
            output=_text(f"{where}.output", item.output),
        )
    if kind == "reasoning":
        thought = _reasoning_text(where, item, seal)
        return ReasoningItem(
            id=item.id or new_id("rs"),
            content=None if thought is None else [ReasoningText(text=thought)],
        )
    if kind in ("input_image", "input_file"):
        _refuse(where, f"{kind} items are not supported: no vision model is served here")
    _refuse(
        f"{where}.type",
        f"{kind!r} items are not supported; send message, function_call, "
        "function_call_output or reasoning items",
    )


def _text(where: str, content: Content) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        if part.type in ("input_image", "input_file", "input_audio"):
            _refuse(
                f"{where}[{index}]",
                f"{part.type} parts are not supported: no model here reads images or files; "
                "send input_text parts",
            )
        if part.type not in _TEXT_PARTS or part.text is None:
            _refuse(f"{where}[{index}]", f"only text parts are supported, not {part.type!r}")
        texts.append(part.text)
    return "".join(texts)


def _reasoning_text(where: str, item: InputItem, seal: ReasoningSeal) -> str | None:
    """What the model thought, from the sealed copy this server issued, else from the
    item's own reasoning_text parts; None when neither is there (a summary alone)."""
    if item.encrypted_content:
        return seal.open(item.encrypted_content, f"{where}.encrypted_content")
    if isinstance(item.content, list):
        texts = [part.text for part in item.content if part.type == "reasoning_text" and part.text]
        return "".join(texts) or None
    return None


def chat_messages(
    items: Sequence[Item], instructions: str | None, *, first_input: int = 0
) -> tuple[ChatMessage, ...]:
    """The conversation as chat messages: instructions first, then each item in order; calls
    join the assistant message they follow, and reasoning the assistant turn after it.
    `items[first_input:]` are the request's input (errors name their place in it)."""
    messages: list[ChatMessage] = []
    if instructions:
        messages.append(ChatMessage("system", instructions))
    call_ids: set[str] = set()
    reasoning: str | None = None
    for index, item in enumerate(items):
        if isinstance(item, ReasoningItem):
            text = "".join(part.text for part in item.content or ())
            reasoning = (reasoning or "") + text if text else reasoning
        elif isinstance(item, MessageItem):
            role = _ROLES[item.role]
            text = "".join(part.text for part in item.content)
            thought = reasoning if role == "assistant" else None
            messages.append(ChatMessage(role, text, reasoning=thought))
            reasoning = None if role == "assistant" else reasoning
        elif isinstance(item, FunctionCallItem):
            called = qualified(item.namespace, item.name)
            call = ToolCall(id=item.call_id, name=called, arguments=item.arguments)
            call_ids.add(item.call_id)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                messages[-1] = msgspec.structs.replace(last, tool_calls=(*last.tool_calls, call))
            else:
                messages.append(ChatMessage("assistant", "", (call,), reasoning=reasoning))
                reasoning = None
        else:
            if item.call_id not in call_ids:
                _refuse(
                    f"input[{index - first_input}].call_id",
                    f"{item.call_id!r} answers no function_call before it; send the call_id "
                    "the call came with",
                )
            messages.append(ChatMessage("tool", item.output, tool_call_id=item.call_id))
    return tuple(messages)


def tool_use(data: ResponseRequest) -> tuple[ToolUse | None, ToolNames]:
    """The functions the model may call; tools this server cannot run (web_search and the
    other hosted tools, custom tools) are left out."""
    names = ToolNames()
    specs: list[ToolSpec] = []
    for index, tool in enumerate(data.tools or ()):
        where = f"tools[{index}]"
        if tool.type == "function":
            specs.append(_function(where, tool, None, names))
        namespace = _checked_name(f"{where}.name", tool.name) if tool.type == "namespace" else None
        for inner, function in enumerate(tool.tools or ()):
            if function.type != "function":
                continue
            inner_where = f"{where}.tools[{inner}]"
            if namespace is not None:
                specs.append(_function(inner_where, function, namespace, names))
            else:  # functions nested in another tool are not offered, but named as the schema says
                _checked_name(f"{inner_where}.name", function.name)
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            _refuse("tools", f"two tools are called {spec.name}; give each its own name")
        seen.add(spec.name)
    choice = data.tool_choice
    if not specs:
        if choice == "required" or isinstance(choice, FunctionChoice):
            _refuse("tool_choice", "asks for a call, but the request has no function tools")
        return None, names
    named = None
    if isinstance(choice, FunctionChoice):
        named = choice.name if choice.name in seen else None
        if named is None:
            _refuse(
                "tool_choice",
                f"names the function {choice.name!r}, which is not among the request's "
                f"function tools ({', '.join(sorted(seen))})",
            )
    mode = "required" if isinstance(choice, FunctionChoice) else choice or "auto"
    use = ToolUse(
        tools=tuple(specs), mode=mode, named=named, parallel=data.parallel_tool_calls is not False
    )
    return use, names


def _function(where: str, tool: ToolBody, namespace: str | None, names: ToolNames) -> ToolSpec:
    own = _checked_name(f"{where}.name", tool.name)
    name = qualified(namespace, own)
    if namespace is not None:
        names.namespaced[name] = (namespace, own)
    return ToolSpec(
        name=name,
        description=tool.description,
        parameters=None
        if tool.parameters is None
        else msgspec.json.encode(tool.parameters).decode(),
    )


def _checked_name(where: str, name: str | None) -> str:
    if name is None or not re.fullmatch(_NAME_PATTERN, name):
        _refuse(where, "a name of 1 to 64 letters, digits, _ . or - is needed")
    return name


def json_output(data: ResponseRequest) -> JsonOutput | None:
    text_format = data.text.format if data.text is not None else None
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return JsonOutput()
    if text_format.schema is None:
        _refuse("text.format.schema", "a json_schema format needs its schema")
    return JsonOutput(schema=msgspec.json.encode(text_format.schema).decode())


def generation(
    data: ResponseRequest,
    messages: tuple[ChatMessage, ...],
    use: ToolUse | None,
    context_length: int,
) -> GenerationRequest:
    """Without max_output_tokens the answer runs until the turn ends or the context is full;
    with it, no further than the context either."""
    shaped = json_output(data)
    if shaped is not None and use is not None and use.mode != "none":
        _refuse(
            "text.format",
            "cannot shape an answer that may be a function call; send tool_choice none with "
            "it, or describe the format in the function's parameters",
        )
    limit = data.max_output_tokens or context_length
    return GenerationRequest(
        messages=messages,
        max_tokens=min(limit, context_length),
        # OpenAI's defaults: temperature 1, top_p 1.
        sampling=SamplingParams(
            temperature=1.0 if data.temperature is None else data.temperature,
            top_p=1.0 if data.top_p is None else data.top_p,
            top_k=0,
            json_output=shaped,
        ),
        chat=ChatOptions(
            tool_use=use,
            reasoning="split",
            reasoning_effort=None if data.reasoning is None else data.reasoning.effort,
        ),
        cache_key=data.prompt_cache_key,
        speculative=data.speculative,
    )
