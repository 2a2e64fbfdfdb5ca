"""Grammars that allow only well-formed calls to the allowed tools, with valid arguments.

`required` and a named tool constrain the whole answer to calls. `auto` lets the model write
freely until it opens a call; from the opening on, llama.cpp's lazy grammar constrains the rest
(`trigger_patterns`, searched in the generated text, each with its first group where the
grammar starts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from locallab_gguf.engine.runtime.grammar import (
    GrammarLimitExceeded,
    check_grammar_size,
    check_schema_size_and_depth,
    schema_gbnf,
)
from locallab_gguf.engine.tools.formats import SPECS, ToolFormat
from locallab_gguf.engine.tools.schema_fit import loosened
from locallab_gguf.engine.types import ToolSpec, ToolUse
from locallab_gguf.errors import InvalidRequest

log = logging.getLogger(__name__)

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
    spec = SPECS[tool_format]
    calls = [
        _call_schema(tool.name, fitted_parameters(index, tool), spec.arguments_key)
        for index, tool in enumerate(use.tools)
        if use.named is None or tool.name == use.named
    ]
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
    try:
        check_grammar_size(gbnf)
    except GrammarLimitExceeded as exc:
        raise GrammarLimitExceeded(
            f"the {len(calls)} tools together: {exc} Send fewer tools or simpler schemas."
        ) from exc
    triggers = _TRIGGERS[tool_format] if use.mode == "auto" else ()
    return ToolGrammar(gbnf=gbnf, trigger_patterns=triggers)


def fitted_parameters(index: int, tool: ToolSpec) -> dict[str, Any]:
    """The tool's parameters as a schema the grammar can follow (schema_fit.py): loosened
    where it asks more than the grammar can, refused, naming the tool, only above the limits
    that protect the engine (schema size and nesting, grammar size)."""
    if tool.parameters is None:
        return {"type": "object"}
    where = f"{tool.where or f'tools[{index}].parameters'} ({tool.name})"
    try:
        schema = check_schema_size_and_depth(tool.parameters)
        fitted: dict[str, Any] = loosened(schema)
        if fitted.get("type") != "object" and "properties" not in fitted:
            fitted = {"type": "object"}  # arguments are an object whatever the schema says
        check_grammar_size(_gbnf(fitted))
    except GrammarLimitExceeded as exc:
        raise GrammarLimitExceeded(f"{where}: {exc}") from exc
    except InvalidRequest as exc:
        # What is left is a schema the converter still cannot read (a regular expression
        # beyond it, say): the call is then held to an object of any shape.
        log.warning("%s: arguments unconstrained, as %s", where, exc)
        return {"type": "object"}
    return fitted


def _call_schema(name: str, parameters: dict[str, Any], arguments_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _gbnf(schema: dict[str, Any]) -> str:
    try:
        return schema_gbnf(schema)
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
