"""Chat messages -> prompt text, through the model's own Jinja chat template.

The template's own markup (`<|im_start|>`, `[INST]`...) must become the model's control tokens;
text a client sent must never do so, or a user could end their turn and write a system or
assistant turn of their own. So every client string that holds a control token's text is
given to the template with that text replaced by a placeholder, and the rendered prompt comes
back as parts: the template's text, to tokenize with control tokens, and the replaced texts,
to tokenize as plain text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from locallab_gguf.engine.types import ChatMessage
from locallab_gguf.errors import InvalidRequest, ModelLoadFailed

# Private-use characters mark a placeholder: \ue000 <index> \ue001. The marker itself is
# escaped in client text too, so a client cannot write a placeholder of its own.
_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


class PromptPart(NamedTuple):
    text: str
    markup: bool  # the template's own text: control-token text in it becomes control tokens


def _raise_exception(message: str) -> NoReturn:
    # Templates call raise_exception() to reject conversations they cannot express,
    # e.g. a system message on a model without a system role.
    raise InvalidRequest(f"the model's chat template refused these messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # As Hugging Face's templates expect: plain JSON, not Jinja's HTML-escaped kind.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _Escaper:
    """Replaces control-token text in client strings by placeholders, and remembers each."""

    def __init__(self, pattern: re.Pattern[str] | None) -> None:
        self._pattern = pattern
        self.replaced: list[str] = []

    def text(self, value: str) -> str:
        if self._pattern is None or not self._pattern.search(value):
            return value
        return self._pattern.sub(self._placeholder, value)

    def value(self, value: Any) -> Any:
        """Every string inside JSON-like data, keys included."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value

    def _placeholder(self, match: re.Match[str]) -> str:
        self.replaced.append(match.group(0))
        return f"{_OPEN}{len(self.replaced) - 1}{_CLOSE}"


class ChatTemplate:
    """A compiled template; rendering is pure and safe to call from any thread.

    `control_texts` are the texts of the model's control tokens: client text holding one of
    them is kept apart from the template's markup (see the module docstring).
    """

    def __init__(
        self,
        source: str,
        bos_token: str,
        eos_token: str,
        control_texts: Iterable[str] = (),
    ) -> None:
        # The same whitespace rules and extensions as the Hugging Face tokenizer that these
        # templates target.
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.Undefined,
            extensions=[jinja2.ext.loopcontrols],
        )
        environment.filters["tojson"] = _tojson
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateError as exc:
            raise ModelLoadFailed(f"the chat template does not compile: {exc}") from exc
        self.source = source
        self._bos_token = bos_token
        self._eos_token = eos_token
        texts = sorted({t for t in control_texts if t} | {_OPEN}, key=len, reverse=True)
        self._control = re.compile("|".join(re.escape(t) for t in texts))

    def render(
        self,
        messages: Sequence[ChatMessage],
        add_generation_prompt: bool = True,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt as one text (client text and markup alike)."""
        return "".join(
            part.text
            for part in self.render_parts(
                messages, add_generation_prompt, tools=tools, variables=variables
            )
        )

    def render_parts(
        self,
        messages: Sequence[ChatMessage],
        add_generation_prompt: bool = True,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> list[PromptPart]:
        """The prompt as markup parts and the client's control-token texts between them."""
        escaper = _Escaper(self._control)
        context: dict[str, Any] = dict(escaper.value(dict(variables or {})))
        context.update(
            messages=[_message_data(message, escaper) for message in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=self._bos_token,
            eos_token=self._eos_token,
            raise_exception=_raise_exception,
            strftime_now=_strftime_now,
        )
        # As apply_chat_template passes them: absent (undefined) when there are none.
        if tools:
            context["tools"] = escaper.value(list(tools))
        try:
            rendered = self._template.render(**context)
        except jinja2.TemplateError as exc:
            raise InvalidRequest(
                f"the model's chat template failed on these messages: {exc}"
            ) from exc
        except (TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
            raise InvalidRequest(
                f"the model's chat template cannot express these messages ({exc})"
            ) from exc
        return _split(rendered, escaper.replaced)


def _message_data(message: ChatMessage, escaper: _Escaper) -> dict[str, Any]:
    """A message as apply_chat_template receives it: keys only for what the message has."""
    data: dict[str, Any] = {"role": message.role, "content": escaper.text(message.content)}
    if message.tool_calls:
        data["tool_calls"] = [
            {
                "id": escaper.text(call.id),
                "type": "function",
                "function": {
                    "name": escaper.text(call.name),
                    "arguments": escaper.value(_arguments_value(call.arguments)),
                },
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        data["tool_call_id"] = escaper.text(message.tool_call_id)
    if message.reasoning:
        data["reasoning_content"] = escaper.text(message.reasoning)
    return data


def _arguments_value(arguments: str) -> Any:
    # Templates write arguments with `| tojson`, so they get the parsed object; text that is
    # not JSON stays text.
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _split(rendered: str, replaced: Sequence[str]) -> list[PromptPart]:
    parts: list[PromptPart] = []
    at = 0
    for match in _PLACEHOLDER.finditer(rendered):
        index = int(match.group(1))
        if index >= len(replaced):  # not ours; cannot happen, as the marker is escaped
            continue
        if match.start() > at:
            parts.append(PromptPart(rendered[at : match.start()], True))
        parts.append(PromptPart(replaced[index], False))
        at = match.end()
    if at < len(rendered):
        parts.append(PromptPart(rendered[at:], True))
    return parts
