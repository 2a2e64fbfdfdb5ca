"""A small client of a server's OpenAI-compatible API, on the standard library alone.

`locallab-gguf chat` uses it to stream replies from /v1/chat/completions; it needs nothing
that the server itself does not install.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from locallab_gguf.cli.server_client import ServerClient
from locallab_gguf.errors import ServerRefused


class Reply(msgspec.Struct, kw_only=True):
    """How a streamed reply ended: its tokens, and seconds from the request to its first text
    and to its last byte."""

    completion_tokens: int
    prompt_tokens: int
    seconds: float
    first_text_seconds: float | None
    finish_reason: str | None

    @property
    def tokens_per_second(self) -> float:
        """Generation speed: after the first token, so the prompt's evaluation is left out."""
        first = self.first_text_seconds
        if first is not None and self.completion_tokens > 1 and self.seconds > first:
            return (self.completion_tokens - 1) / (self.seconds - first)
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class ChatClient(ServerClient):
    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get_json("/health")
        return body

    def model_ids(self) -> list[str]:
        return [model["id"] for model in self.get_json("/v1/models")["data"]]

    def stream_chat(
        self,
        model: str,
        messages: Sequence[dict[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[str | Reply]:
        """Yields the reply's text as it is generated, then one Reply."""
        body: dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        started = time.monotonic()
        first_text: float | None = None
        usage: dict[str, int] = {}
        finish_reason = None
        with self.open("POST", "/v1/chat/completions", body) as response:
            for data in _sse_data(response):
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ServerRefused(chunk["error"].get("message", "the generation failed"))
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    finish_reason = choice.get("finish_reason") or finish_reason
                    text = choice.get("delta", {}).get("content")
                    if text:
                        if first_text is None:
                            first_text = time.monotonic() - started
                        yield text
        yield Reply(
            completion_tokens=usage.get("completion_tokens", 0),
            prompt_tokens=usage.get("prompt_tokens", 0),
            seconds=time.monotonic() - started,
            first_text_seconds=first_text,
            finish_reason=finish_reason,
        )


def _sse_data(response: Any) -> Iterator[str]:
    """The data of each server-sent event (this server sends one data line per event)."""
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line.startswith("data:"):
            yield line[5:].lstrip(" ")
