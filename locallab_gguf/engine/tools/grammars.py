"""Grammars that allow only well-formed calls to the allowed tools, with valid arguments.

`required` and a named tool constrain the whole answer to calls. `auto` lets the model write
freely until it opens a call; from the opening on, llama.cpp's lazy grammar constrains the rest
(`trigger_patterns`, searched in the generated text, each with its first group where the
grammar starts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llama_cpp import llama_grammar

from locallab_gguf.engine.runtime.grammar import json_grammar
from locallab_gguf.engine.tools.formats import SPECS, ToolFormat
from locallab_gguf.engine.types import ToolSpec, ToolUse
from locallab_gguf.errors import InvalidRequest

# json_schema_to_gbnf writes optional spaces as `space ::= " "?`; an opening the trigger
# matches must be one the grammar accepts, or llama.cpp aborts when it replays it.
_TRIGGERS: dict[ToolFormat, tuple[str, ...]] = {
    ToolFormat.HERMES: ("(<tool_call>)",),
    ToolFormat.LLAMA3: ("(<\\|python_tag\\|>)", '^\\s*(\\{ ?"name")'),
    ToolFormat.MISTRAL: ("(\\[TOOL_CALLS\\])",),
    ToolFormat.GENERIC: ('(\\{ ?"tool_calls")',),
}


@dataclass(frozen=True)
class ToolGrammar:
    """A GBNF grammar; `trigger_patterns` empty means it holds from the first token."""

    gbnf: str
    trigger_patterns: tuple[str, ...] = ()


def tool_grammar(tool_format: ToolFormat, use: ToolUse) -> ToolGrammar | None:
    """The grammar for a request's calls; None when it makes none."""
    if use.mode == "none":
        return None
    tools = [tool for tool in use.tools if use.named is None or tool.name == use.named]
    spec = SPECS[tool_format]
    calls = [_call_schema(tool, spec.arguments_key) for tool in tools]
    call_schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if tool_format is ToolFormat.GENERIC:
        array: dict[str, Any] = {"type": "array", "items": call_schema, "minItems": 1}
        if not use.parallel:
            array["maxItems"] = 1
        gbnf = _gbnf(
            {
                "type": "object",
                "properties": {"tool_calls": array},
                "required": ["tool_calls"],
                "additionalProperties": False,
            }
        )
    else:
        gbnf = _with_root(_gbnf(call_schema), _root(tool_format, parallel=use.parallel))
    triggers = _TRIGGERS[tool_format] if use.mode == "auto" else ()
    return ToolGrammar(gbnf=gbnf, trigger_patterns=triggers)


def check_tool_schemas(tools: tuple[ToolSpec, ...]) -> None:
    """Refuses, naming it, a tool whose parameters cannot become a grammar."""
    for index, tool in enumerate(tools):
        if tool.parameters is None:
            continue
        try:
            json_grammar(json.loads(tool.parameters))
        except InvalidRequest as exc:
            raise InvalidRequest(
                f"tools[{index}].function.parameters ({tool.name}): {exc}"
            ) from exc


def _call_schema(tool: ToolSpec, arguments_key: str) -> dict[str, Any]:
    parameters = json.loads(tool.parameters) if tool.parameters else {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _gbnf(schema: dict[str, Any]) -> str:
    try:
        return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError, RecursionError) as exc:
        raise InvalidRequest(
            f"the tools' parameters cannot be turned into a grammar ({type(exc).__name__}: "
            f"{exc}); use the JSON Schema subset of types, properties, required, items and enum"
        ) from exc


def _root(tool_format: ToolFormat, *, parallel: bool) -> str:
    if tool_format is ToolFormat.HERMES:
        one = '"<tool_call>" space-nl call space-nl "</tool_call>"'
        return one + (f" (space-nl {one})*" if parallel else "")
    if tool_format is ToolFormat.LLAMA3:
        return '"<|python_tag|>"? call' + (' (";" space call)*' if parallel else "")
    # Mistral: one array holding every call.
    more = ' ("," space call)*' if parallel else ""
    return f'"[TOOL_CALLS]" "[" space call{more} "]"'


def _with_root(call_gbnf: str, root: str) -> str:
    """The call grammar's root becomes `call`, under a root of the format's own."""
    lines = []
    for line in call_gbnf.splitlines():
        if line.startswith("root ::="):
            line = "call ::=" + line[len("root ::=") :]
        lines.append(line)
    lines.append(f"root ::= {root}")
    lines.append("space-nl ::= [ \\t\\n]{0,4}")
    return "\n".join(lines) + "\n"
