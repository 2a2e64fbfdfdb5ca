"""Speculative decoding gives the answer decoding one token at a time gives, token for token.

Each test runs the same request with speculation (the engine's default) and with
`speculative=False` in the same engine, in the deterministic mode (where a request's arithmetic
does not depend on what else is in its batch), and compares every event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from locallab_gguf.engine.runtime.draft_cost import HIGHEST, LOWEST
from locallab_gguf.engine.runtime.job import Job
from locallab_gguf.engine.runtime.speculation import Draft, DraftSource
from locallab_gguf.engine.types import (
    ChatMessage,
    ChatOptions,
    Event,
    Failed,
    Finished,
    GenerationRequest,
    JsonOutput,
    SamplingParams,
    SpeculationStats,
    TextDelta,
    ToolCallStarted,
    ToolSpec,
    ToolUse,
)
from locallab_gguf.models.registry import Registry
from tests.conftest import DEFAULT_ID, DETERMINISTIC_SETTINGS
from tests.support.engine_harness import EngineHarness, running_engine
from tests.support.two_models import assembled_gemma

SETTINGS = msgspec.structs.replace(DETERMINISTIC_SETTINGS, parallel=2)
PASSAGE = (
    "The old lighthouse keeper climbed the stairs every evening at dusk. He polished the great "
    "lens, trimmed the wick and wrote the weather in his logbook. Ships passed far out at sea, "
    "and none of them knew his name, but every one of them trusted his light."
)
COPY = f"{PASSAGE}\n\nRepeat the text above exactly, word for word."
KEYS = ("name", "age", "city", "country", "email", "job")
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        key: {"type": "integer"} if key == "age" else {"type": "string", "maxLength": 24}
        for key in KEYS
    },
    "required": list(KEYS),
    "additionalProperties": False,
}
WEATHER_TOOL = ToolSpec(
    name="get_weather",
    description="The weather at a place and time",
    parameters=json.dumps(
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "country": {"type": "string"},
                "day": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "country", "day", "unit"],
        }
    ),
)


@pytest.fixture(scope="module")
def engine(registry: Registry, model_path: Path) -> Iterator[EngineHarness]:
    with running_engine(model_path, registry.get(DEFAULT_ID), SETTINGS) as harness:
        yield harness


class WrongDrafter:
    """Drafts, at every step it may, tokens the model will not pick: the last token's
    neighbours in the vocabulary, which are never what follows it in these answers."""

    def __init__(self) -> None:
        self.drafted = 0

    def draft(self, job: Job, history: Sequence[int], most: int) -> Draft | None:
        self.drafted += most
        return Draft([(history[-1] + 1 + i) % 49152 for i in range(most)], DraftSource.TEST)


def chat(content: str, **fields: Any) -> GenerationRequest:
    sampling = fields.pop("sampling", SamplingParams(temperature=0.0))
    return GenerationRequest(
        messages=(ChatMessage("user", content),),
        max_tokens=fields.pop("max_tokens", 96),
        sampling=sampling,
        **fields,
    )


def answer(events: Sequence[Event]) -> list[Any]:
    """The events as a client sees them, but for the time the request waited for a slot, the
    ids of its tool calls (random) and how much of its prompt an earlier request left cached."""
    return [
        (event.finish_reason, replace(event.usage, cached_tokens=0), event.stop_sequence)
        if isinstance(event, Finished)
        else msgspec.to_builtins(msgspec.structs.replace(event, id=""))
        if isinstance(event, ToolCallStarted)
        else msgspec.to_builtins(event)
        for event in events
    ]


def text_of(events: Sequence[Event]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def with_and_without(engine: EngineHarness, request: GenerationRequest) -> tuple[Any, Any]:
    plain = engine.run(replace(request, speculative=False))
    speculated = engine.run(request)
    return answer(plain), answer(speculated)


def accepted(stats: SpeculationStats) -> tuple[int, int]:
    return stats.ngram_accepted, stats.grammar_accepted


def test_an_answer_that_copies_its_prompt_is_the_same_with_prompt_lookup(
    engine: EngineHarness,
) -> None:
    before = engine.engine.stats().speculation
    plain, speculated = with_and_without(engine, chat(COPY))
    after = engine.engine.stats().speculation
    assert speculated == plain
    assert after.ngram_accepted > before.ngram_accepted  # the copy was drafted and kept


def test_a_json_schema_answer_is_the_same_with_grammar_drafts(engine: EngineHarness) -> None:
    sampling = SamplingParams(
        temperature=0.0, json_output=JsonOutput(schema=json.dumps(PERSON_SCHEMA))
    )
    request = chat("Describe a fictional person as JSON.", sampling=sampling, max_tokens=160)
    before = engine.engine.stats().speculation
    plain, speculated = with_and_without(engine, request)
    after = engine.engine.stats().speculation
    assert speculated == plain
    assert after.grammar_accepted > before.grammar_accepted  # the keys were drafted and kept
    text = "".join(event["text"] for event in speculated if isinstance(event, dict))
    assert list(json.loads(text)) == list(KEYS)


def test_a_required_tool_call_is_the_same_with_grammar_drafts(engine: EngineHarness) -> None:
    tools = ToolUse(tools=(WEATHER_TOOL,), mode="required")
    request = chat(
        "What will the weather be in Lyon, France tomorrow, in celsius?",
        chat=ChatOptions(tool_use=tools),
        max_tokens=120,
    )
    before = engine.engine.stats().speculation
    plain, speculated = with_and_without(engine, request)
    after = engine.engine.stats().speculation
    assert speculated == plain
    assert any(event["type"] == "ToolCallStarted" for event in speculated if "type" in event)
    assert after.grammar_accepted > before.grammar_accepted


def test_a_seeded_sample_is_the_same_with_speculation(engine: EngineHarness) -> None:
    # The sampler draws its numbers in the same order either way (acceptance.py).
    sampling = SamplingParams(temperature=0.8, top_p=0.95, seed=1234)
    plain, speculated = with_and_without(engine, chat(COPY, sampling=sampling))
    assert speculated == plain


def test_log_probabilities_are_the_same_with_speculation(engine: EngineHarness) -> None:
    plain, speculated = with_and_without(engine, chat(COPY, logprobs=3, max_tokens=40))
    assert speculated == plain
    assert any(event.get("logprobs") for event in speculated if isinstance(event, dict))


def test_a_stop_string_inside_a_drafted_run_ends_the_answer_at_the_same_place(
    engine: EngineHarness,
) -> None:
    full = text_of(engine.run(chat(COPY, speculative=False)))
    stop = "wrote the"  # a phrase well inside the copy, which prompt lookup drafts through
    assert stop in full
    plain, speculated = with_and_without(engine, chat(COPY, stop=(stop,)))
    assert speculated == plain
    assert speculated[-1][2] == stop
    assert "wrote" not in "".join(e["text"] for e in speculated[:-1] if "text" in e)


@pytest.mark.parametrize("max_tokens", [1, 17])
def test_max_tokens_ends_the_answer_at_the_same_token(
    engine: EngineHarness, max_tokens: int
) -> None:
    plain, speculated = with_and_without(engine, chat(COPY, max_tokens=max_tokens))
    assert speculated == plain
    assert speculated[-1][0] == "length"
    assert speculated[-1][1].completion_tokens == max_tokens


def test_a_request_cancelled_mid_draft_frees_its_slot_for_the_same_answer(
    engine: EngineHarness,
) -> None:
    reference = answer(engine.run(chat(COPY, speculative=False)))
    job_id = engine.submit(chat(COPY))
    engine.sink.wait_for(job_id, lambda events: len(events) >= 3)
    engine.engine.cancel(job_id)
    events = engine.sink.wait_ended(job_id)
    assert isinstance(events[-1], Failed)
    assert answer(engine.run(chat(COPY))) == reference


def test_two_requests_speculated_side_by_side_each_give_their_own_answer(
    engine: EngineHarness,
) -> None:
    story = chat("Write a short story about a fox.", max_tokens=48)
    references = [
        answer(engine.run(msgspec.structs.replace(r, speculative=False)))
        for r in (
            chat(COPY),
            story,
        )
    ]
    ids = [engine.submit(chat(COPY)), engine.submit(story)]
    assert [answer(engine.sink.wait_ended(job_id)) for job_id in ids] == references


def test_a_draft_that_is_always_wrong_changes_nothing(
    registry: Registry, model_path: Path, engine: EngineHarness
) -> None:
    requests = [
        chat(COPY, max_tokens=48),
        chat(
            "Describe a fictional person as JSON.",
            max_tokens=48,
            sampling=SamplingParams(
                temperature=0.0, json_output=JsonOutput(schema=json.dumps(PERSON_SCHEMA))
            ),
        ),
        chat(COPY, max_tokens=48, sampling=SamplingParams(temperature=0.9, seed=99)),
    ]
    references = [
        answer(engine.run(msgspec.structs.replace(r, speculative=False))) for r in requests
    ]
    drafter = WrongDrafter()
    with running_engine(model_path, registry.get(DEFAULT_ID), SETTINGS, drafter) as wrong:
        assert [answer(wrong.run(request)) for request in requests] == references
    assert drafter.drafted > 0


def test_an_engine_that_times_what_a_drafted_token_costs_answers_as_one_told_it(
    engine: EngineHarness, registry: Registry, model_path: Path
) -> None:
    # The tests' engines are given the figure (conftest.TEST_SETTINGS); a server's times it in
    # its first slot's sequence when it opens, which must leave that sequence as it found it.
    request = chat(COPY, max_tokens=24)
    expected = answer(engine.run(request))
    timing = msgspec.structs.replace(SETTINGS, draft_cost=None)
    with running_engine(model_path, registry.get(DEFAULT_ID), timing) as timed:
        cost = timed.engine.stats().speculation.extra_token_cost
        got = answer(timed.run(request))
    assert LOWEST <= cost <= HIGHEST
    assert got == expected


def test_a_request_that_turns_speculation_off_is_never_drafted(engine: EngineHarness) -> None:
    before = engine.engine.stats().speculation
    engine.run(chat(COPY, speculative=False, max_tokens=40))
    after = engine.engine.stats().speculation
    assert after == before


STORY = "Write a short story about a lighthouse keeper and a storm."


def test_the_model_as_its_own_draft_model_gives_the_same_answers_and_is_always_kept(
    registry: Registry, model_path: Path
) -> None:
    # Stories repeat nothing, so prompt lookup has little to draft: most drafts come from the
    # draft model, here the served model itself, whose greedy guess is what the target picks
    # (the deterministic mode gives both the same arithmetic). Two requests side by side
    # check that each slot drafts from its own tokens in the draft model's KV.
    requests = [chat(STORY, max_tokens=40), chat("Write a short poem about rain.", max_tokens=40)]
    with running_engine(
        model_path, registry.get(DEFAULT_ID), SETTINGS, draft_model=model_path
    ) as engine:
        assert engine.engine.info.draft_model == model_path.name
        references = [answer(engine.run(replace(r, speculative=False))) for r in requests]
        alone = answer(engine.run(requests[0]))
        ids = [engine.submit(request) for request in requests]
        together = [answer(engine.sink.wait_ended(job_id)) for job_id in ids]
        stats = engine.engine.stats().speculation
    assert alone == references[0]
    assert together == references
    assert stats.model_accepted == stats.model_drafted > 0


def test_a_draft_model_with_another_vocabulary_is_refused_and_the_model_served_without(
    registry: Registry, model_path: Path
) -> None:
    gemma = assembled_gemma()
    spec = registry.get(DEFAULT_ID)
    with running_engine(model_path, spec, SETTINGS, draft_model=gemma) as engine:
        info = engine.engine.info
        assert info.draft_model is None
        assert info.draft_model_refused is not None
        assert "vocabulary" in info.draft_model_refused
        assert gemma.name in info.draft_model_refused
        assert model_path.name in info.draft_model_refused
        assert isinstance(engine.run(chat(STORY, max_tokens=8))[-1], Finished)
        assert engine.engine.stats().speculation.model_drafted == 0
