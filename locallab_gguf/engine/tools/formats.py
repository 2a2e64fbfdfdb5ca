"""The ways models write tool calls, and which one a chat template uses."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ToolFormat(enum.Enum):
    HERMES = "hermes"  # <tool_call>{"name", "arguments"}</tool_call>: Qwen 2.5 / 3, Hermes
    LLAMA3 = "llama3"  # {"name", "parameters"}, optionally after <|python_tag|>: Llama 3.1-3.3
    MISTRAL = "mistral"  # [TOOL_CALLS][{"name", "arguments"}, ...]: Mistral instruct models
    GENERIC = "generic"  # {"tool_calls": [{"name", "arguments"}]}: described in a system message


class CallLayout(enum.Enum):
    """Where the call objects sit in the JSON value that follows an opening."""

    OBJECT = "object"  # the value is one call
    ARRAY = "array"  # the value is an array of calls
    TOOL_CALLS = "tool_calls"  # the value is {"tool_calls": [calls]}


@dataclass(frozen=True)
class FormatSpec:
    # Tags after which the JSON of the calls follows, e.g. "<tool_call>".
    tags: tuple[str, ...]
    # Openings that are the JSON's own start, as tokens with optional spaces between, e.g.
    # ("{", '"name"'). With `json_at_start`, only where no text has come before.
    json_openings: tuple[tuple[str, ...], ...]
    json_at_start: bool
    closer: str | None  # what ends each call, e.g. "</tool_call>"
    layout: CallLayout
    arguments_key: str  # the key the grammar writes
    arguments_keys: tuple[str, ...]  # the keys the parser accepts
    separators: str  # characters that may stand between two calls, besides spaces
    short_ids: bool  # call ids of 9 letters and digits (Mistral's templates insist)


SPECS: dict[ToolFormat, FormatSpec] = {
    ToolFormat.HERMES: FormatSpec(
        tags=("<tool_call>",),
        json_openings=(),
        json_at_start=False,
        closer="</tool_call>",
        layout=CallLayout.OBJECT,
        arguments_key="arguments",
        arguments_keys=("arguments",),
        separators="",
        short_ids=False,
    ),
    ToolFormat.LLAMA3: FormatSpec(
        tags=("<|python_tag|>",),
        json_openings=(("{", '"name"'),),
        json_at_start=True,
        closer=None,
        layout=CallLayout.OBJECT,
        arguments_key="parameters",
        arguments_keys=("parameters", "arguments"),
        separators=";",
        short_ids=False,
    ),
    ToolFormat.MISTRAL: FormatSpec(
        tags=("[TOOL_CALLS]",),
        json_openings=(),
        json_at_start=False,
        closer=None,
        layout=CallLayout.ARRAY,
        arguments_key="arguments",
        arguments_keys=("arguments",),
        separators="",
        short_ids=True,
    ),
    ToolFormat.GENERIC: FormatSpec(
        tags=(),
        json_openings=(("{", '"tool_calls"'),),
        json_at_start=False,
        closer=None,
        layout=CallLayout.TOOL_CALLS,
        arguments_key="arguments",
        arguments_keys=("arguments",),
        separators="",
        short_ids=False,
    ),
}


def detect_format(template_source: str, *, expresses_tools: bool) -> ToolFormat:
    """The format a template teaches its model; GENERIC when it cannot describe tools."""
    if not expresses_tools:
        return ToolFormat.GENERIC
    if "<tool_call>" in template_source:
        return ToolFormat.HERMES
    if "[TOOL_CALLS]" in template_source:
        return ToolFormat.MISTRAL
    if "<|python_tag|>" in template_source or "ipython" in template_source:
        return ToolFormat.LLAMA3
    return ToolFormat.GENERIC


def thinks(template_source: str) -> bool:
    """Whether the template belongs to a model that thinks in <think>...</think>."""
    return "<think>" in template_source or "</think>" in template_source
