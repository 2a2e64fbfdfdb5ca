"""A job's text pipeline without a model: token pieces in, events out (UTF-8 -> stop strings
-> tool-call parser -> log-probabilities), and the crash-resume replay that emits nothing."""

from __future__ import annotations

from locallab_gguf.engine.runtime.job import TextPipeline
from locallab_gguf.engine.runtime.text import StopMatcher
from locallab_gguf.engine.tools.formats import ToolFormat
from locallab_gguf.engine.tools.parser import OutputParser
from locallab_gguf.engine.types import (
    EventBatch,
    TextDelta,
    TokenLogprobs,
    ToolCallArguments,
    ToolCallStarted,
)

EURO = "€".encode()  # three bytes: a character split across tokens


def run(pipeline: TextPipeline, pieces: list[bytes]) -> tuple[EventBatch, bool]:
    events: EventBatch = []
    for piece in pieces:
        if pipeline.feed(piece, None, events):
            return events, True
    return events, False


def text_of(events: EventBatch) -> str:
    return "".join(e.text for _, e in events if isinstance(e, TextDelta))


def test_a_character_split_across_tokens_comes_out_whole() -> None:
    pipeline = TextPipeline(7, StopMatcher([]), None)
    events, stopped = run(pipeline, [b"5 ", EURO[:1], EURO[1:2], EURO[2:], b"."])
    assert not stopped
    assert text_of(events) == "5 €."
    assert all(job_id == 7 for job_id, _ in events)
    assert "".join(e.text for _, e in events[:1] if isinstance(e, TextDelta)) == "5 "


def test_a_stop_string_across_pieces_is_never_emitted_and_ends_the_job() -> None:
    pipeline = TextPipeline(1, StopMatcher(["END"]), None)
    events, stopped = run(pipeline, [b"one E", b"N", b"D two"])
    assert stopped
    assert text_of(events) == "one "
    finished: EventBatch = []
    assert pipeline.finish("stop", finished) == "stop"
    assert finished == []  # nothing held once a stop string matched
    assert pipeline.stops.matched == "END"


def test_text_held_as_a_possible_stop_is_flushed_at_the_end() -> None:
    pipeline = TextPipeline(1, StopMatcher(["END"]), None)
    events, stopped = run(pipeline, [b"almost E"])
    assert not stopped and text_of(events) == "almost "
    pipeline.finish("length", events)
    assert text_of(events) == "almost E"


def test_log_probabilities_go_out_with_the_text_of_their_tokens() -> None:
    pipeline = TextPipeline(1, StopMatcher([]), None)
    first = TokenLogprobs(EURO[:1], -0.5, ())
    second = TokenLogprobs(EURO[1:], -0.25, ())
    events: EventBatch = []
    pipeline.feed(EURO[:1], first, events)
    assert events == []  # no text yet, so its log-probability waits
    pipeline.feed(EURO[1:], second, events)
    ((_, delta),) = events
    assert isinstance(delta, TextDelta)
    assert delta.text == "€" and delta.logprobs == (first, second)


def test_tool_calls_are_read_out_of_the_text_and_finish_as_tool_calls() -> None:
    parser = OutputParser(ToolFormat.HERMES, reasoning=False)
    pipeline = TextPipeline(3, StopMatcher([]), parser)
    text = 'Looking.<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
    events, _ = run(pipeline, [text[i : i + 5].encode() for i in range(0, len(text), 5)])
    assert pipeline.finish("stop", events) == "tool_calls"
    started = [e for _, e in events if isinstance(e, ToolCallStarted)]
    arguments = "".join(e.text for _, e in events if isinstance(e, ToolCallArguments))
    assert [call.name for call in started] == ["weather"]
    assert arguments.replace(" ", "") == '{"city":"Oslo"}'
    assert text_of(events) == "Looking."


def test_replayed_pieces_emit_nothing_and_the_stream_continues_where_it_was() -> None:
    pieces = [b"Hello ", EURO[:2], EURO[2:], b" wor", b"ld"]
    whole = TextPipeline(1, StopMatcher(["ld!"]), None)
    all_events, _ = run(whole, pieces)
    whole.finish("length", all_events)

    cut = 2  # the engine died after two tokens: their text went out already
    resumed = TextPipeline(1, StopMatcher(["ld!"]), None)
    before, _ = run(TextPipeline(1, StopMatcher(["ld!"]), None), pieces[:cut])
    resumed.replay(pieces[:cut])
    after, _ = run(resumed, pieces[cut:])
    resumed.finish("length", after)
    assert text_of(before) + text_of(after) == text_of(all_events) == "Hello € world"


def test_tokens_written_while_thinking_are_counted_as_reasoning() -> None:
    pipeline = TextPipeline(1, StopMatcher([]), OutputParser(None, reasoning=True))
    thought = [b"<think>", b"Let", b" me", b" see", b"</think>"]
    answer = [b"It", b" is", b" four", b"."]
    events, _ = run(pipeline, thought + answer)
    assert text_of(events) == "It is four."
    # The opening tag's token is thinking already; the closing one ends it.
    assert pipeline.reasoning_tokens == 4


def test_no_reasoning_is_counted_where_thinking_is_not_split() -> None:
    pipeline = TextPipeline(1, StopMatcher([]), None)
    run(pipeline, [b"<think>", b"hmm", b"</think>", b"ok"])
    assert pipeline.reasoning_tokens == 0


def test_a_schema_grammar_keeps_control_characters_out_of_strings() -> None:
    # A raw newline inside a JSON string does not parse; the grammar must not allow it.
    from locallab_gguf.engine.runtime.grammar import schema_gbnf

    grammar = schema_gbnf({"type": "object", "properties": {"a": {"type": "string"}}})
    chars = [line for line in grammar.splitlines() if line.startswith("char ::=")]
    assert chars and all(r"\x00-\x1F" in line for line in chars)
