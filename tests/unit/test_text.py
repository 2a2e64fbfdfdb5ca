"""Streaming text: UTF-8 split across tokens, stop strings split across pieces."""

from __future__ import annotations

from locallab_gguf.engine.runtime.text import StopMatcher, Utf8Stream


def test_a_character_split_across_tokens_comes_out_whole() -> None:
    data = "a🐉é中".encode()
    stream = Utf8Stream()
    out = [stream.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) == "a🐉é中"
    assert all(piece in ("", "a", "🐉", "é", "中") for piece in out)
    assert stream.pending_bytes == 0


def test_stop_string_across_pieces_is_cut_and_never_emitted() -> None:
    matcher = StopMatcher(["<END>"])
    emitted = []
    for piece in ["Hello <", "EN", "D> ignored"]:
        text, stopped = matcher.feed(piece)
        emitted.append(text)
        if stopped:
            break
    assert "".join(emitted) == "Hello "
    assert stopped


def test_held_text_that_was_not_a_stop_is_released() -> None:
    matcher = StopMatcher(["<END>"])
    assert matcher.feed("a <E") == ("a ", False)
    assert matcher.feed("X") == ("<EX", False)
    assert matcher.feed("<EN") == ("", False)
    assert matcher.flush() == "<EN"


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(["world", "lo w"])
    assert matcher.feed("hello world") == ("hel", True)


def test_no_stops_passes_text_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("anything") == ("anything", False)
