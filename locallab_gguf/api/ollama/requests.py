"""Ollama's requests -> the engine's: names, options, formats and prompts."""

from __future__ import annotations

import msgspec

from locallab_gguf.api.common.fields import stop_strings
from locallab_gguf.api.ollama.wire import (
    ChatRequest,
    GenerateRequest,
    OllamaRequest,
    Options,
)
from locallab_gguf.durations import keep_alive_seconds
from locallab_gguf.engine.types import (
    ChatMessage,
    ChatOptions,
    GenerationRequest,
    JsonOutput,
    SamplingParams,
    ToolCall,
    ToolSpec,
    ToolUse,
)
from locallab_gguf.errors import UnsupportedParameter

LATEST = ":latest"


def model_id_of(name: str) -> str:
    """Ollama names models `name:tag`; a registry id is `name`, served as `name:latest`."""
    return name.removesuffix(LATEST)


def ollama_name(model_id: str) -> str:
    # Hub ids (owner/repo:file.gguf) already hold a colon; they are shown as they are.
    return model_id if ":" in model_id else model_id + LATEST


def refuse_unsupported(data: OllamaRequest) -> None:
    """Refuse, by name, what this server cannot do, rather than quietly ignore it."""
    if data.keep_alive is not None:  # a malformed duration is a 400 before anything runs
        keep_alive_seconds(data.keep_alive)
    if data.options is not None and data.options.num_predict == 0:
        raise UnsupportedParameter("options.num_predict", "must be at least 1, or -1")
    if isinstance(data, GenerateRequest):
        if data.tools:
            raise UnsupportedParameter("tools", "tools belong to /api/chat, as in Ollama")
        if data.images:
            raise UnsupportedParameter("images", "this server has no vision models yet")
        if data.suffix:
            raise UnsupportedParameter("suffix", "fill-in-the-middle is not supported")
        if data.template:
            raise UnsupportedParameter(
                "template", "a Go template cannot replace the model's chat template here"
            )
        if data.context:
            raise UnsupportedParameter(
                "context", "the deprecated context token list is not supported; send messages"
            )
    if isinstance(data, ChatRequest):
        for index, message in enumerate(data.messages):
            if message.images:
                raise UnsupportedParameter(
                    f"messages[{index}].images", "this server has no vision models yet"
                )


def is_load_only(data: GenerateRequest | ChatRequest) -> bool:
    """Ollama's preload idiom: a request naming only the model loads it and answers at once."""
    if isinstance(data, GenerateRequest):
        return not data.prompt and not data.system
    return not data.messages


def _chat_messages(data: ChatRequest) -> tuple[ChatMessage, ...]:
    """Ollama's turns; its calls carry no ids, so each gets one, and a tool message answers
    the earliest call not yet answered (by `tool_name` when it gives one)."""
    turns: list[ChatMessage] = []
    unanswered: list[ToolCall] = []
    for index, message in enumerate(data.messages):
        calls: tuple[ToolCall, ...] = ()
        if message.tool_calls:
            calls = tuple(
                ToolCall(
                    id=f"call_{index}_{number}",
                    name=call.function.name,
                    arguments=msgspec.json.encode(call.function.arguments).decode(),
                )
                for number, call in enumerate(message.tool_calls)
            )
            unanswered.extend(calls)
        answered = None
        if message.role == "tool":
            matching = [c for c in unanswered if message.tool_name in (None, c.name)]
            if not matching:
                raise UnsupportedParameter(
                    f"messages[{index}]",
                    "a tool message answers a call of an earlier assistant message; none is "
                    "left to answer" + (f" for {message.tool_name!r}" if message.tool_name else ""),
                )
            answered = matching[0]
            unanswered.remove(answered)
        turns.append(
            ChatMessage(
                message.role,
                message.content,
                tool_calls=calls,
                tool_call_id=None if answered is None else answered.id,
            )
        )
    return tuple(turns)


def _chat_options(data: GenerateRequest | ChatRequest) -> ChatOptions:
    tool_use = None
    if isinstance(data, ChatRequest) and data.tools:
        specs = tuple(
            ToolSpec(
                name=tool.function.name,
                description=tool.function.description,
                parameters=(
                    None
                    if tool.function.parameters is None
                    else msgspec.json.encode(tool.function.parameters).decode()
                ),
                where=f"tools[{index}].function.parameters",
            )
            for index, tool in enumerate(data.tools)
        )
        tool_use = ToolUse(tools=specs, mode="auto")
    # think true: thinking apart from the answer; false: asked not to think (templates that
    # know enable_thinking); unset: the model's own way, tags left in the text.
    kwargs = '{"enable_thinking": false}' if data.think is False else None
    return ChatOptions(
        tool_use=tool_use,
        reasoning="none" if data.think is None else "split",
        template_kwargs=kwargs,
        reasoning_effort=data.think if isinstance(data.think, str) else None,
    )


def generation_of(
    data: GenerateRequest | ChatRequest,
    *,
    has_chat_template: bool,
    context_length: int,
) -> GenerationRequest:
    options = data.options or Options()
    if isinstance(data, ChatRequest):
        messages: tuple[ChatMessage, ...] | None = _chat_messages(data)
        prompt = None
    elif data.raw or not has_chat_template:
        # A base model's template is the prompt itself: Ollama sends it as written.
        messages, prompt = None, data.prompt
    else:
        turns = [ChatMessage("system", data.system)] if data.system else []
        messages, prompt = (*turns, ChatMessage("user", data.prompt)), None
    return GenerationRequest(
        prompt=prompt,
        messages=messages,
        max_tokens=_new_tokens(options.num_predict, context_length),
        sampling=_sampling(options, data.format, context_length),
        stop=stop_strings(options.stop),
        chat=_chat_options(data),
        speculative=options.speculative,
    )


def _new_tokens(num_predict: int | None, context_length: int) -> int:
    # -1 (Ollama's default) and -2 both run until the model stops or the context is full.
    # 0 is refused with the request's other fields (refuse_unsupported).
    if num_predict is None or num_predict <= 0:
        return context_length - 1
    return num_predict


def _sampling(
    options: Options, output_format: str | dict[str, object] | None, context_length: int
) -> SamplingParams:
    """Ollama's defaults: temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1 over the
    last 64 tokens."""
    last_n = 64 if options.repeat_last_n is None else options.repeat_last_n
    return SamplingParams(
        temperature=0.8 if options.temperature is None else options.temperature,
        top_p=0.9 if options.top_p is None else options.top_p,
        top_k=40 if options.top_k is None else options.top_k,
        min_p=options.min_p or 0.0,
        repetition_penalty=1.1 if options.repeat_penalty is None else options.repeat_penalty,
        presence_penalty=options.presence_penalty or 0.0,
        frequency_penalty=options.frequency_penalty or 0.0,
        penalty_last_n=context_length if last_n < 0 else last_n,
        seed=options.seed if options.seed is not None and options.seed >= 0 else None,
        json_output=_json_output(output_format),
    )


def _json_output(output_format: str | dict[str, object] | None) -> JsonOutput | None:
    if output_format == "json":
        return JsonOutput()
    if isinstance(output_format, dict):
        return JsonOutput(schema=msgspec.json.encode(output_format).decode())
    return None
