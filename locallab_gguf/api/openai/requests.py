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
    NamedToolChoice,
    OpenAIRequest,
)
from locallab_gguf.engine.types import (
    ChatMessage,
    ChatOptions,
    GenerationRequest,
    JsonOutput,
    Role,
    SamplingParams,
    ToolCall,
    ToolSpec,
    ToolUse,
)
from locallab_gguf.errors import UnsupportedParameter

# OpenAI: "-100 should result in a ban ... of the relevant token".
BAN_BIAS = -100.0

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for the system role
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def chat_generation(data: ChatCompletionRequest, context_length: int) -> GenerationRequest:
    """Without max_tokens (or max_completion_tokens) the answer runs until the model ends
    its turn or the context is full, as OpenAI's API and llama.cpp's server do."""
    _refuse_common(data)
    _refuse_chat_only(data)
    top_logprobs = _top_logprobs(data)
    tool_use = _tool_use(data)
    json_output = _json_output(data)
    if json_output is not None and tool_use is not None and tool_use.mode != "none":
        _refuse(
            "response_format",
            "cannot shape an answer that may be a tool call; send tool_choice none with it, "
            "or describe the format in the tool's parameters",
        )
    return GenerationRequest(
        messages=_messages(data.messages),
        max_tokens=data.max_completion_tokens or data.max_tokens or context_length,
        sampling=_sampling(data, json_output),
        stop=stop_strings(data.stop),
        logprobs=top_logprobs,
        speculative=data.speculative,
        chat=ChatOptions(
            tool_use=tool_use,
            reasoning="none" if data.reasoning_format == "none" else "split",
            template_kwargs=(
                None
                if data.chat_template_kwargs is None
                else msgspec.json.encode(data.chat_template_kwargs).decode()
            ),
            reasoning_effort=data.reasoning_effort,
        ),
        cache_key=data.prompt_cache_key,
    )


def completion_generation(data: CompletionRequest, context_length: int) -> GenerationRequest:
    _refuse_common(data)
    if data.echo:
        _refuse("echo", "repeating the prompt in the answer is not supported; leave echo out")
    if not _accepted(data.best_of, 1):
        _refuse("best_of", "one candidate is generated per request; leave best_of out")
    if not _accepted(data.suffix, ""):
        _refuse("suffix", "inserting text before a suffix is not supported; leave suffix out")
    return GenerationRequest(
        prompt=_single_prompt(data.prompt),
        max_tokens=data.max_tokens or context_length,
        sampling=_sampling(data, None),
        stop=stop_strings(data.stop),
        logprobs=data.logprobs,
        speculative=data.speculative,
    )


def include_usage(data: OpenAIRequest) -> bool:
    return bool(data.stream_options and data.stream_options.include_usage)


def _refuse(param: str, message: str) -> NoReturn:
    raise UnsupportedParameter(param, message)


def _accepted(value: Any, *allowed: Any) -> bool:
    """Null, or one of `allowed` exactly (0 is not false), as the schema's `only` says."""
    return value is None or any(type(value) is type(each) and value == each for each in allowed)


def _refuse_common(data: OpenAIRequest) -> None:
    if not _accepted(data.n, 1):
        _refuse("n", "one choice is generated per request; send n = 1 and make more requests")
    if data.stream_options is not None and not data.stream:
        _refuse("stream_options", "only applies to streamed requests; send stream: true")
    if not _accepted(data.service_tier, "auto", "default"):
        _refuse("service_tier", "this server has one tier; send auto or leave it out")
    if not _accepted(data.store, False):
        _refuse("store", "this server stores no completions; leave store out")
    if data.metadata is not None:
        _refuse("metadata", "metadata belongs to stored completions, which are not supported")


def _refuse_chat_only(data: ChatCompletionRequest) -> None:
    if data.functions is not None:
        _refuse("functions", "the legacy functions field is not supported; send tools")
    if data.function_call not in (None, "none"):
        _refuse("function_call", "the legacy function_call is not supported; send tool_choice")
    if not _accepted(data.modalities, ["text"]):
        _refuse("modalities", "only text output is supported")
    for name, value in (
        ("audio", data.audio),
        ("prediction", data.prediction),
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
    return data.top_logprobs or 0


def _tool_use(data: ChatCompletionRequest) -> ToolUse | None:
    tools = data.tools or []
    choice = data.tool_choice
    if not tools:
        if choice not in (None, "none"):
            _refuse("tool_choice", "names no tool to call, as the request has no tools; send tools")
        return None
    names: set[str] = set()
    specs = []
    for index, tool in enumerate(tools):
        function = tool.function
        if function.name in names:
            _refuse(
                f"tools[{index}].function.name",
                f"a second tool is named {function.name}; give each tool its own name",
            )
        names.add(function.name)
        parameters = function.parameters
        specs.append(
            ToolSpec(
                name=function.name,
                description=function.description,
                parameters=None if parameters is None else msgspec.json.encode(parameters).decode(),
                where=f"tools[{index}].function.parameters",
            )
        )
    named = None
    if isinstance(choice, NamedToolChoice):
        named = choice.function.name
        if named not in names:
            _refuse(
                "tool_choice",
                f"names the tool {named!r}, which is not among the request's tools "
                f"({', '.join(sorted(names))})",
            )
    return ToolUse(
        tools=tuple(specs),
        mode="required" if isinstance(choice, NamedToolChoice) else choice or "auto",
        named=named,
        parallel=data.parallel_tool_calls is not False,
    )


def _messages(bodies: list[ChatMessageBody]) -> tuple[ChatMessage, ...]:
    call_ids: set[str] = set()
    messages = []
    for index, body in enumerate(bodies):
        message = _message(index, body, call_ids)
        call_ids.update(call.id for call in message.tool_calls)
        messages.append(message)
    return tuple(messages)


def _message(index: int, message: ChatMessageBody, call_ids: set[str]) -> ChatMessage:
    """`call_ids`: the ids of the calls made in earlier messages."""
    where = f"messages[{index}]"
    role = _ROLES.get(message.role)
    if role is None:
        _refuse(f"{where}.role", "legacy function messages are not supported; send tool messages")
    for name in ("name", "function_call", "refusal", "audio"):
        if getattr(message, name) is not None:
            _refuse(f"{where}.{name}", "not supported by this server; leave it out")
    calls: tuple[ToolCall, ...] = ()
    if message.tool_calls:
        if role != "assistant":
            _refuse(f"{where}.tool_calls", "only assistant messages hold tool calls")
        calls = tuple(
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in message.tool_calls
        )
    if role == "tool":
        if message.tool_call_id is None:
            _refuse(f"{where}.tool_call_id", "a tool message names the call it answers")
        if message.tool_call_id not in call_ids:
            _refuse(
                f"{where}.tool_call_id",
                f"{message.tool_call_id!r} is the id of no tool call in an earlier assistant "
                "message; send the id the call came with",
            )
    elif message.tool_call_id is not None:
        _refuse(f"{where}.tool_call_id", "only tool messages answer a call")
    content = "" if calls and message.content is None else _text_content(where, message.content)
    return ChatMessage(role, content, tool_calls=calls, tool_call_id=message.tool_call_id)


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
    text = _prompt_text(prompt)
    if not text:
        _refuse("prompt", "the prompt is empty; send at least one character")
    return text


def _prompt_text(prompt: str | list[Any]) -> str:
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        return ""
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
