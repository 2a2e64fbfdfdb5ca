"""Field types every API surface shares: bounded token counts, stop strings, usage."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar.params import PathParameter
from msgspec import Meta

from locallab_gguf.durations import DURATION_PATTERN
from locallab_gguf.engine.types import Usage
from locallab_gguf.models.ids import MODEL_ID_FORMS, MODEL_ID_PATTERN

# llama.cpp counts tokens in 32-bit ints; bounding every count here also keeps an absurd number
# from reaching the engine (the worker pipe cannot carry integers beyond 64 bits).
INT32_MAX = 2**31 - 1
NewTokens = Annotated[int, Meta(ge=1, le=INT32_MAX, description="new tokens to generate")]
Stop = str | list[str] | None
# How long the model stays loaded once idle, as in Ollama: seconds, or text such as "5m"; 0
# unloads it after the request, a negative duration keeps it. Text is decoded as any string
# and refused by the handler, whose message says what a duration is; the schema states the
# same pattern it applies.
KeepAlive = Annotated[str, Meta(extra_json_schema={"pattern": DURATION_PATTERN})] | float | None

_MODEL_ID_DESCRIPTION = (
    "a registry id, or a hub file as owner/repo:file.gguf or hf://owner/repo/file.gguf, or "
    "a hub repository as owner/repo:QUANT (such as Q4_K_M) or owner/repo"
)
# A model id in a body. Any string decodes; the handler names what is wrong with a malformed
# hub id, and the schema states the forms it accepts.
ModelId = Annotated[
    str,
    Meta(
        min_length=1,
        description=_MODEL_ID_DESCRIPTION,
        extra_json_schema={"pattern": MODEL_ID_PATTERN},
    ),
]
# Ollama's names: a model id, or one with Ollama's default tag.
OllamaModelName = Annotated[
    str,
    Meta(
        min_length=1,
        description=_MODEL_ID_DESCRIPTION + ", each optionally followed by :latest",
        extra_json_schema={"pattern": rf"^(?:{MODEL_ID_FORMS})(?::latest)?$"},
    ),
]
# A model id in a path: a registry id or a hub file. The handler parses it, naming what is
# wrong with a malformed one; the schema states the same forms.
ModelIdInPath = Annotated[
    str,
    PathParameter(
        description=_MODEL_ID_DESCRIPTION,
        schema_extra={"pattern": MODEL_ID_PATTERN},
    ),
]


def stop_strings(stop: Stop) -> tuple[str, ...]:
    """One stop string or a list of them, as the engine takes them."""
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def arguments_object(text: str) -> dict[str, Any]:
    """A tool call's arguments (JSON text) as the object Ollama and Anthropic send; {} for a
    call cut off before its arguments were whole."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class UsageBody(msgspec.Struct):
    """Token counts of one answer, as OpenAI's `usage` (LocalLab answers the same shape)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageBody:
        return cls(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
