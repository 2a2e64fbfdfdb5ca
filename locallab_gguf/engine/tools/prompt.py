"""A chat request -> its prompt tokens, the reader of its output, and its call grammar.

Tools reach the template as Hugging Face's `apply_chat_template(messages, tools=...)` passes
them. A template that cannot express tools (it never mentions them) gets the generic format
instead: the tools and a JSON reply format described in a system message, past calls written
as that JSON, and tool results as messages of a role the template renders.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from locallab_gguf.engine.runtime.chat_template import ChatTemplate
from locallab_gguf.engine.tools.formats import ToolFormat, detect_format, thinks
from locallab_gguf.engine.tools.grammars import ToolGrammar, tool_grammar
from locallab_gguf.engine.tools.parser import THINK_OPEN, OutputParser
from locallab_gguf.engine.types import (
    ChatMessage,
    ChatOptions,
    ToolCall,
    ToolSpec,
    ToolUse,
)
from locallab_gguf.errors import InvalidRequest

# Tokenizes one part of a prompt; the flag says whether control-token text becomes tokens.
Tokenize = Callable[[str, bool], list[int]]

_PROBE = "probe_7f3a9c"
_PROBE_ID = "probe7f3a"  # 9 characters: Mistral's templates check the length


@dataclass(frozen=True)
class TemplateAbilities:
    tools: bool  # renders the tools it is given
    tool_calls: bool  # renders an assistant message's tool_calls
    tool_role: bool  # renders messages of role tool


@dataclass(frozen=True)
class PreparedChat:
    tokens: list[int]
    parser: OutputParser | None  # None: the output is plain text
    grammar: ToolGrammar | None


class ChatPrompter:
    """Renders chats for one model's template; built once per loaded model."""

    def __init__(self, template: ChatTemplate, tokenize: Tokenize) -> None:
        self._template = template
        self._tokenize = tokenize
        self.abilities = probe(template)
        self.tool_format = detect_format(template.source, expresses_tools=self.abilities.tools)
        self.thinks = thinks(template.source)

    def prepare(self, messages: Sequence[ChatMessage], options: ChatOptions) -> PreparedChat:
        use = options.tool_use
        calling = use is not None and use.mode != "none"
        tools: list[dict[str, Any]] | None = None
        # Built first: a schema above the engine's limits is refused before any rendering.
        grammar = tool_grammar(self.tool_format, use) if use is not None and calling else None
        if use is not None and calling:
            if self.tool_format is ToolFormat.GENERIC:
                messages = with_generic_tools(messages, use)
            else:
                tools = [tool_data(tool) for tool in use.tools]
        messages = self._polyfilled(messages)
        parts = self._template.render_parts(messages, tools=tools, variables=_variables(options))
        tokens = [token for part in parts for token in self._tokenize(part.text, part.markup)]
        split_reasoning = options.reasoning == "split" and self.thinks
        parser = None
        if calling or split_reasoning:
            rendered = "".join(part.text for part in parts)
            parser = OutputParser(
                self.tool_format if calling else None,
                reasoning=split_reasoning,
                thinking=split_reasoning and rendered.rstrip().endswith(THINK_OPEN),
                tool_names=frozenset(tool.name for tool in use.tools) if use and calling else None,
            )
        return PreparedChat(tokens=tokens, parser=parser, grammar=grammar)

    def _polyfilled(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """Past calls and tool results, in a form the template renders."""
        out = []
        for message in messages:
            if message.tool_calls and (
                self.tool_format is ToolFormat.GENERIC or not self.abilities.tool_calls
            ):
                text = generic_calls_text(message.tool_calls)
                content = f"{message.content}\n{text}" if message.content else text
                message = ChatMessage("assistant", content)
            elif message.role == "tool" and not self.abilities.tool_role:
                message = ChatMessage(
                    "user", f"Result of tool call {message.tool_call_id}:\n{message.content}"
                )
            out.append(message)
        return out


def probe(template: ChatTemplate) -> TemplateAbilities:
    """What the template can express, found by rendering examples (as llama.cpp's minja does)."""
    user = ChatMessage("user", "hello")
    call = ToolCall(id=_PROBE_ID, name=_PROBE, arguments='{"probe_argument": 1}')
    assistant = ChatMessage("assistant", "", tool_calls=(call,))
    result = ChatMessage("tool", f"{_PROBE}_result", tool_call_id=_PROBE_ID)
    probe_tool = tool_data(ToolSpec(name=_PROBE, parameters='{"type": "object"}'))
    return TemplateAbilities(
        tools=_renders(template, [user], _PROBE, tools=[probe_tool]),
        tool_calls=_renders(template, [user, assistant], _PROBE),
        tool_role=_renders(template, [user, assistant, result], f"{_PROBE}_result"),
    )


def _renders(
    template: ChatTemplate,
    messages: list[ChatMessage],
    needle: str,
    tools: list[dict[str, Any]] | None = None,
) -> bool:
    try:
        return needle in template.render(messages, tools=tools)
    except InvalidRequest:
        return False


def tool_data(tool: ToolSpec) -> dict[str, Any]:
    """A tool as apply_chat_template receives it: OpenAI's own shape."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = json.loads(tool.parameters)
    return {"type": "function", "function": function}


def generic_calls_text(calls: Sequence[ToolCall]) -> str:
    return json.dumps(
        {"tool_calls": [{"name": c.name, "arguments": _loads(c.arguments)} for c in calls]},
        ensure_ascii=False,
    )


def with_generic_tools(messages: Sequence[ChatMessage], use: ToolUse) -> list[ChatMessage]:
    """The tools and the reply format, in the system message (added if there is none)."""
    described = "\n".join(
        json.dumps(tool_data(tool)["function"], ensure_ascii=False) for tool in use.tools
    )
    lines = [
        "You can call these tools (each with the JSON Schema of its arguments):",
        described,
        "",
        "To call tools, reply with only this JSON, nothing before or after it:",
        '{"tool_calls": [{"name": "<tool name>", "arguments": {<the arguments>}}]}',
    ]
    if use.parallel:
        lines.append("The list may hold several calls.")
    if use.named is not None:
        lines.append(f"Call the tool {use.named} now.")
    elif use.mode == "required":
        lines.append("Call a tool now.")
    else:
        lines.append("If no tool is needed, answer in plain text.")
    lines.append("A tool's result comes back in a message of its own; use it to answer.")
    text = "\n".join(lines)
    if messages and messages[0].role == "system":
        first = messages[0]
        return [ChatMessage("system", f"{first.content}\n\n{text}"), *messages[1:]]
    return [ChatMessage("system", text), *messages]


def _variables(options: ChatOptions) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    if options.template_kwargs is not None:
        variables.update(json.loads(options.template_kwargs))
    if options.reasoning_effort is not None:
        variables["reasoning_effort"] = options.reasoning_effort
    return variables


def _loads(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
