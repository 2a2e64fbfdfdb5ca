"""Field types every API surface shares: bounded token counts, stop strings, usage."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from locallab_gguf.engine.types import Usage

# llama.cpp counts tokens in 32-bit ints; bounding every count here also keeps an absurd number
# from reaching the engine (the worker pipe cannot carry integers beyond 64 bits).
INT32_MAX = 2**31 - 1
NewTokens = Annotated[int, Meta(ge=1, le=INT32_MAX, description="new tokens to generate")]
Stop = str | list[str] | None


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
