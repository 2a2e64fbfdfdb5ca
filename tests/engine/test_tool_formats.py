"""Tool calls and thinking per format family, against real chat templates (tests/data).

Prompts are rendered as the engine renders them; model outputs written in each family's format
are read back by the streaming parser, whole and cut at every character.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama_cpp import Llama

from locallab_gguf.engine.runtime.chat_template import ChatTemplate
from locallab_gguf.engine.tools.formats import ToolFormat
from locallab_gguf.engine.tools.parser import OutputParser
from locallab_gguf.engine.tools.prompt import ChatPrompter
from locallab_gguf.engine.types import (
    ChatMessage,
    ChatOptions,
    Event,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallArguments,
    ToolCallStarted,
    ToolSpec,
    ToolUse,
)

TEMPLATES = Path(__file__).parents[1] / "data" / "chat_templates"

WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city",
    parameters=json.dumps(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        }
    ),
)
TOOLS = ToolUse(tools=(WEATHER,))
QUESTION = ChatMessage("user", "Weather in Paris?")


@pytest.fixture(scope="module")
def smollm2_template(model_path: Path) -> str:
    """The default model's own template: ChatML, with no word about tools."""
    llama = Llama(str(model_path), vocab_only=True, verbose=False)
    try:
        return str(llama.metadata["tokenizer.chat_template"])
    finally:
        llama.close()


def template(name: str, bos: str = "", eos: str = "") -> ChatTemplate:
    return ChatTemplate((TEMPLATES / f"{name}.jinja").read_text(), bos, eos)


def prompter(name: str, bos: str = "", eos: str = "") -> tuple[ChatPrompter, list[str]]:
    """A prompter whose tokenizer records the prompt's text instead of tokenizing it."""
    seen: list[str] = []

    def tokenize(text: str, markup: bool) -> list[int]:
        seen.append(text)
        return []

    return ChatPrompter(template(name, bos, eos), tokenize), seen


FAMILIES = {
    "Qwen-Qwen2.5-7B-Instruct": (ToolFormat.HERMES, "<|im_end|>"),
    "meta-llama-Llama-3.2-3B-Instruct": (ToolFormat.LLAMA3, "<|eot_id|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": (ToolFormat.MISTRAL, "</s>"),
    "Qwen-Qwen3-0.6B": (ToolFormat.HERMES, "<|im_end|>"),
}

# One answer with two calls (one for Llama 3.2, which takes one call at a time), as each
# family writes it.
OUTPUTS = {
    ToolFormat.HERMES: (
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", '
        '"unit": "c"}}\n</tool_call>'
    ),
    ToolFormat.LLAMA3: '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    ToolFormat.MISTRAL: (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c"}}]'
    ),
    ToolFormat.GENERIC: (
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c"}}]}'
    ),
}
PARIS = ("get_weather", '{"city": "Paris"}')
ROME = ("get_weather", '{"city": "Rome", "unit": "c"}')
EXPECTED = {
    ToolFormat.HERMES: ("Let me look.", [PARIS, ROME]),
    ToolFormat.LLAMA3: ("", [PARIS]),
    ToolFormat.MISTRAL: ("", [PARIS, ROME]),
    ToolFormat.GENERIC: ("", [PARIS, ROME]),
}


def read(
    tool_format: ToolFormat | None,
    pieces: list[str],
    *,
    reasoning: bool = False,
    thinking: bool = False,
    tool_names: frozenset[str] | None = None,
) -> tuple[str, str, list[tuple[str, str]]]:
    """(content, reasoning, [(name, arguments)]) that the parser makes of the pieces."""
    parser = OutputParser(
        tool_format, reasoning=reasoning, thinking=thinking, tool_names=tool_names
    )
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    thought = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    calls: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, ToolCallStarted):
            assert event.index not in calls, "a call is opened once"
            calls[event.index] = [event.name, ""]
        elif isinstance(event, ToolCallArguments):
            assert event.index in calls, "arguments come after their call's name"
            calls[event.index][1] += event.text
    return content, thought, [(name, arguments) for name, arguments in calls.values()]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_template_format_family_is_detected(name: str) -> None:
    chat, _ = prompter(name)
    assert chat.tool_format is FAMILIES[name][0]
    assert chat.abilities.tools and chat.abilities.tool_calls and chat.abilities.tool_role


def test_default_chatml_template_without_tools_gets_the_generic_format(
    smollm2_template: str,
) -> None:
    chat = ChatPrompter(ChatTemplate(smollm2_template, "", ""), lambda text, markup: [])
    assert not chat.abilities.tools
    assert chat.tool_format is ToolFormat.GENERIC


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tools_and_a_past_call_reach_the_template(name: str) -> None:
    chat, seen = prompter(name, bos="<s>", eos=FAMILIES[name][1])
    call = ToolCall(id="abc123XYZ", name="get_weather", arguments='{"city": "Paris"}')
    history = (
        QUESTION,
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", '{"temperature": 21}', tool_call_id="abc123XYZ"),
    )
    chat.prepare(history, ChatOptions(tool_use=TOOLS))
    prompt = "".join(seen)
    assert "The weather in a city" in prompt  # the tool, described by the template itself
    assert '"city"' in prompt
    assert prompt.count("get_weather") >= 2  # the tool and the past call
    assert "temperature" in prompt  # the tool's result (Llama 3.2 writes it as a JSON string)
    marker = {
        ToolFormat.HERMES: "<tool_response>",
        ToolFormat.LLAMA3: "ipython",
        ToolFormat.MISTRAL: "[TOOL_RESULTS]",
    }[FAMILIES[name][0]]
    assert marker in prompt


@pytest.mark.parametrize("tool_format", list(OUTPUTS), ids=lambda f: f.value)
def test_each_family_output_is_read_as_its_calls(tool_format: ToolFormat) -> None:
    content, _, calls = read(tool_format, [OUTPUTS[tool_format]])
    assert (content, calls) == EXPECTED[tool_format]
    for _, arguments in calls:
        json.loads(arguments)


@pytest.mark.parametrize("tool_format", list(OUTPUTS), ids=lambda f: f.value)
def test_output_cut_at_every_character_gives_the_same_calls(tool_format: ToolFormat) -> None:
    text = OUTPUTS[tool_format]
    whole = read(tool_format, [text])
    for cut in range(1, len(text)):
        assert read(tool_format, [text[:cut], text[cut:]]) == whole, cut
    assert read(tool_format, list(text)) == whole


@pytest.mark.parametrize(
    "text",
    [
        "Plain answer, no call.",
        "A brace { is text, and so is {this}.",
        "<tool_call>\nnot JSON</tool_call> and more",
        '{"name": 1} is JSON but no call',
    ],
)
def test_text_that_is_no_call_stays_content(text: str) -> None:
    for tool_format in OUTPUTS:
        content, _, calls = read(tool_format, list(text))
        assert calls == []
        assert content == text


@pytest.mark.parametrize("tool_format", list(OUTPUTS))
def test_json_naming_a_tool_the_request_does_not_offer_is_no_call(tool_format: ToolFormat) -> None:
    offered = frozenset({"get_weather"})
    assert read(tool_format, list(OUTPUTS[tool_format]), tool_names=offered)[2]
    text = OUTPUTS[tool_format].replace("get_weather", "functionName")
    content, _, calls = read(tool_format, list(text), tool_names=offered)
    assert calls == []
    assert "functionName" in content


@pytest.mark.parametrize("tool_format", [ToolFormat.LLAMA3, ToolFormat.GENERIC])
def test_json_opened_otherwise_than_the_grammar_writes_it_is_no_call(
    tool_format: ToolFormat,
) -> None:
    # A newline after the brace: the lazy grammar's trigger does not match it, so nothing held
    # the arguments to the tool's schema (here a key the tool does not have).
    written = OUTPUTS[tool_format].replace('"city"', '"location"')
    assert read(tool_format, list(written))[2]  # as the grammar writes it: a call
    text = written.replace("{", "{\n  ", 1)
    content, _, calls = read(tool_format, list(text))
    assert calls == []
    assert content == text


def test_arguments_written_before_the_name_still_make_a_call() -> None:
    text = '<tool_call>{"arguments": {"city": "Oslo"}, "name": "get_weather"}</tool_call>'
    assert read(ToolFormat.HERMES, list(text))[2] == [("get_weather", '{"city": "Oslo"}')]


def test_thinking_is_split_from_the_answer_at_every_cut() -> None:
    text = "<think>\nThe user wants weather.\n</think>\n\n" + OUTPUTS[ToolFormat.HERMES]
    whole = read(ToolFormat.HERMES, [text], reasoning=True)
    assert whole[0] == "Let me look."
    assert whole[1].strip() == "The user wants weather."
    assert whole[2] == [PARIS, ROME]
    for cut in range(1, len(text)):
        assert read(ToolFormat.HERMES, [text[:cut], text[cut:]], reasoning=True) == whole


def test_reasoning_format_none_leaves_the_tags_in_content() -> None:
    text = "<think>hmm</think>Paris."
    assert read(None, [text], reasoning=False) == (text, "", [])


def test_qwen3_thinking_switch_reaches_the_template() -> None:
    chat, seen = prompter("Qwen-Qwen3-0.6B")
    off = ChatOptions(reasoning="split", template_kwargs='{"enable_thinking": false}')
    prepared = chat.prepare((QUESTION,), off)
    assert "".join(seen).endswith("<think>\n\n</think>\n\n")
    assert prepared.parser is not None  # a thinking model's answer is still read
    seen.clear()
    chat.prepare((QUESTION,), ChatOptions(reasoning="split"))
    assert "</think>" not in "".join(seen)


def test_generic_format_describes_tools_in_a_system_message(smollm2_template: str) -> None:
    seen: list[str] = []
    chat = ChatPrompter(
        ChatTemplate(smollm2_template, "", ""), lambda text, markup: seen.append(text) or []
    )
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    history = (
        QUESTION,
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "21 degrees", tool_call_id="call_1"),
    )
    prepared = chat.prepare(history, ChatOptions(tool_use=TOOLS))
    prompt = "".join(seen)
    assert prompt.startswith("<|im_start|>system\n")
    assert '"tool_calls"' in prompt and "The weather in a city" in prompt
    assert '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}' in prompt
    assert "21 degrees" in prompt
    assert prepared.grammar is not None and prepared.grammar.trigger_patterns  # auto: lazy
    required = chat.prepare(
        (QUESTION,), ChatOptions(tool_use=ToolUse(tools=(WEATHER,), mode="required"))
    )
    assert required.grammar is not None and not required.grammar.trigger_patterns
    none = chat.prepare((QUESTION,), ChatOptions(tool_use=ToolUse(tools=(WEATHER,), mode="none")))
    assert none.grammar is None and none.parser is None
