"""OpenAI request bodies -> engine requests, refusing by name whatever this server lacks."""

from __future__ import annotations

import math
from typing import Any, NoReturn

import msgspec

from locallab_gguf.api.common.fields import stop_strings
from locallab_gguf.api.openai.wire import (
    ChatCompletionRequest,
    ChatMessageBody,
    CompletionRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    OpenAIRequest,
)
from locallab_gguf.engine.types import (
    MAX_TOP_LOGPROBS,
    ChatMessage,
    GenerationRequest,
    JsonOutput,
    Role,
    SamplingParams,
)
from locallab_gguf.errors import UnsupportedParameter

# OpenAI: "-100 should result in a ban ... of the relevant token".
BAN_BIAS = -100.0

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for the system role
    "user": "user",
    "assistant": "assistant",
}


def chat_generation(data: ChatCompletionRequest, default_max_tokens: int) -> GenerationRequest:
    _refuse_common(data)
    _refuse_chat_only(data)
    top_logprobs = _top_logprobs(data)
    return GenerationRequest(
        messages=tuple(_message(index, message) for index, message in enumerate(data.messages)),
        max_tokens=data.max_completion_tokens or data.max_tokens or default_max_tokens,
        sampling=_sampling(data, _json_output(data)),
        stop=stop_strings(data.stop),
        logprobs=top_logprobs,
    )


def completion_generation(data: CompletionRequest, default_max_tokens: int) -> GenerationRequest:
    _refuse_common(data)
    if data.echo:
        _refuse("echo", "repeating the prompt in the answer is not supported; leave echo out")
    if data.best_of not in (None, 1):
        _refuse("best_of", "one candidate is generated per request; leave best_of out")
    if data.suffix not in (None, ""):
        _refuse("suffix", "inserting text before a suffix is not supported; leave suffix out")
    return GenerationRequest(
        prompt=_single_prompt(data.prompt),
        max_tokens=data.max_tokens or default_max_tokens,
        sampling=_sampling(data, None),
        stop=stop_strings(data.stop),
        logprobs=data.logprobs,
    )


def include_usage(data: OpenAIRequest) -> bool:
    return bool(data.stream_options and data.stream_options.include_usage)


def _refuse(param: str, message: str) -> NoReturn:
    raise UnsupportedParameter(param, message)


def _refuse_common(data: OpenAIRequest) -> None:
    if data.n not in (None, 1):
        _refuse("n", "one choice is generated per request; send n = 1 and make more requests")
    if data.stream_options is not None and not data.stream:
        _refuse("stream_options", "only applies to streamed requests; send stream: true")
    if data.service_tier not in (None, "auto", "default"):
        _refuse("service_tier", "this server has one tier; send auto or leave it out")
    if data.store not in (None, False):
        _refuse("store", "this server stores no completions; leave store out")
    if data.metadata is not None:
        _refuse("metadata", "metadata belongs to stored completions, which are not supported")


def _refuse_chat_only(data: ChatCompletionRequest) -> None:
    if data.tools or data.functions:
        name = "tools" if data.tools else "functions"
        _refuse(name, "tool and function calling are not supported; leave them out")
    for name, value in (("tool_choice", data.tool_choice), ("function_call", data.function_call)):
        if value not in (None, "none"):
            _refuse(name, "tool and function calling are not supported; leave it out")
    if data.modalities not in (None, ["text"]):
        _refuse("modalities", "only text output is supported")
    # parallel_tool_calls is accepted: without tools it has nothing to govern.
    for name, value in (
        ("audio", data.audio),
        ("prediction", data.prediction),
        ("reasoning_effort", data.reasoning_effort),
        ("web_search_options", data.web_search_options),
        ("verbosity", data.verbosity),
    ):
        if value is not None:
            _refuse(name, "not supported by this server; leave it out")


def _top_logprobs(data: ChatCompletionRequest) -> int | None:
    if not data.logprobs:
        if data.top_logprobs is not None:
            _refuse("top_logprobs", "needs logprobs: true")
        return None
    top = data.top_logprobs or 0
    if top > MAX_TOP_LOGPROBS:
        _refuse("top_logprobs", f"at most {MAX_TOP_LOGPROBS} alternatives per token are reported")
    return top


def _message(index: int, message: ChatMessageBody) -> ChatMessage:
    where = f"messages[{index}]"
    role = _ROLES.get(message.role)
    if role is None:
        _refuse(f"{where}.role", f"{message.role} messages need tool calling, which is unsupported")
    for name in ("name", "tool_calls", "tool_call_id", "function_call", "refusal", "audio"):
        if getattr(message, name) is not None:
            _refuse(f"{where}.{name}", "not supported by this server; leave it out")
    return ChatMessage(role, _text_content(where, message.content))


def _text_content(where: str, content: Any) -> str:
    if content is None:
        _refuse(f"{where}.content", "a message needs text content")
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        if part.type != "text" or part.text is None:
            _refuse(
                f"{where}.content[{index}]",
                f"only text parts are supported, not {part.type!r} parts",
            )
        texts.append(part.text)
    return "".join(texts)


def _single_prompt(prompt: str | list[Any]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if prompt and all(isinstance(item, str) for item in prompt):
        _refuse("prompt", "one prompt per request is supported; send one request per prompt")
    _refuse("prompt", "token-id prompts are not supported; send the prompt as a string")


def _json_output(data: ChatCompletionRequest) -> JsonOutput | None:
    response_format = data.response_format
    if isinstance(response_format, JsonObjectFormat):
        return JsonOutput()
    if isinstance(response_format, JsonSchemaFormat):
        schema = response_format.json_schema.schema
        return JsonOutput(schema=None if schema is None else msgspec.json.encode(schema).decode())
    return None


def _sampling(data: OpenAIRequest, json_output: JsonOutput | None) -> SamplingParams:
    """OpenAI's defaults: temperature 1, top_p 1, no penalties."""
    return SamplingParams(
        temperature=1.0 if data.temperature is None else data.temperature,
        top_p=1.0 if data.top_p is None else data.top_p,
        top_k=0,
        presence_penalty=data.presence_penalty or 0.0,
        frequency_penalty=data.frequency_penalty or 0.0,
        seed=data.seed,
        logit_bias=tuple(
            (token, -math.inf if bias <= BAN_BIAS else bias)
            for token, bias in sorted((data.logit_bias or {}).items())
        ),
        json_output=json_output,
    )
