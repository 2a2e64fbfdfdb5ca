"""Chat messages -> prompt text, through the model's own Jinja chat template."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from locallab_gguf.engine.types import ChatMessage
from locallab_gguf.errors import InvalidRequest, ModelLoadFailed


def _raise_exception(message: str) -> NoReturn:
    # Templates call raise_exception() to reject conversations they cannot express,
    # e.g. a system message on a model without a system role.
    raise InvalidRequest(f"the model's chat template refused these messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled template; rendering is pure and safe to call from any thread."""

    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        # The same whitespace rules as the Hugging Face tokenizer that these templates target.
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined
        )
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateError as exc:
            raise ModelLoadFailed(f"the chat template does not compile: {exc}") from exc
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                raise_exception=_raise_exception,
                strftime_now=_strftime_now,
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(
                f"the model's chat template failed on these messages: {exc}"
            ) from exc
