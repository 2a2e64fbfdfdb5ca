"""The pieces of speculative decoding that need no model: the acceptance rule, prompt lookup,
and how a request's draft length follows its acceptance."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from locallab_gguf.engine.runtime.acceptance import one_hot, speculative_choice
from locallab_gguf.engine.runtime.grammar_drafts import _forced
from locallab_gguf.engine.runtime.prompt_lookup import PromptLookup
from locallab_gguf.engine.runtime.speculation import (
    EXTRA_TOKEN_COST,
    MAX_PAUSE,
    PROBE_EVERY,
    PROBE_LENGTH,
    DraftSource,
    DraftState,
    draft_budget,
    required_acceptance,
)

# A fixed random source that sweeps [0, 1) evenly: GRID numbers for the acceptance test, and
# for each refusal GRID numbers for the token drawn instead. The outcome's frequencies are then
# the exact probabilities, to within 1 / GRID.
GRID = 100
P = np.array([0.5, 0.2, 0.15, 0.1, 0.05])


def exact_outcomes(p: np.ndarray, q: np.ndarray, drafted: int) -> tuple[np.ndarray, float]:
    """(how often each token is taken, how often the drafted one is kept), over the grid."""
    taken = np.zeros(len(p))
    kept = 0
    for first in range(GRID):
        first_u = (first + 0.5) / GRID
        token, was_kept = speculative_choice(p, q, drafted, iter_source([first_u, 0.5]))
        if was_kept:
            taken[token] += GRID
            kept += 1
            continue
        for second in range(GRID):
            token, _ = speculative_choice(
                p, q, drafted, iter_source([first_u, (second + 0.5) / GRID])
            )
            taken[token] += 1
    return taken / (GRID * GRID), kept / GRID


def iter_source(numbers: list[float]) -> Callable[[], float]:
    values: Iterator[float] = iter(numbers)
    return lambda: next(values)


@pytest.mark.parametrize("drafted", [0, 1, 4])
def test_a_deterministic_draft_is_kept_with_the_targets_probability_and_output_follows_p(
    drafted: int,
) -> None:
    taken, kept = exact_outcomes(P, one_hot(len(P), drafted), drafted)
    assert kept == pytest.approx(P[drafted], abs=1 / GRID)
    np.testing.assert_allclose(taken, P, atol=2 / GRID)


def test_a_draft_from_another_distribution_still_gives_the_targets_distribution() -> None:
    q = np.array([0.1, 0.4, 0.3, 0.1, 0.1])
    outcomes = [exact_outcomes(P, q, drafted) for drafted in range(len(P))]
    for drafted, (_, kept) in enumerate(outcomes):
        assert kept == pytest.approx(min(1.0, P[drafted] / q[drafted]), abs=1 / GRID)
    # Over the draft's own choices, weighted by q, the output is distributed as p.
    mixed = sum(q[drafted] * taken for drafted, (taken, _) in enumerate(outcomes))
    np.testing.assert_allclose(mixed, P, atol=2 / GRID)


def test_a_refused_deterministic_draft_never_gives_the_drafted_token() -> None:
    taken_after_refusal = np.zeros(len(P))
    for second in range(GRID):
        token, kept = speculative_choice(
            P, one_hot(len(P), 0), 0, iter_source([0.99, (second + 0.5) / GRID])
        )
        assert not kept
        taken_after_refusal[token] += 1 / GRID
    expected = P.copy()
    expected[0] = 0.0
    np.testing.assert_allclose(taken_after_refusal, expected / expected.sum(), atol=2 / GRID)


def lookup_of(tokens: list[int]) -> PromptLookup:
    lookup = PromptLookup()
    lookup.sync(tokens)
    return lookup


def test_prompt_lookup_drafts_what_followed_the_text_that_ends_the_history() -> None:
    passage = [10, 11, 12, 13, 14, 15, 16]
    lookup = lookup_of([1, 2, *passage, 3, 4, 10, 11, 12])
    assert lookup.draft(3) == [13, 14, 15]
    assert lookup.draft(10) == [13, 14, 15, 16, 3, 4, 10, 11, 12]


def test_prompt_lookup_prefers_the_longest_match() -> None:
    # "7 8" was followed by 1 and by 2; "6 7 8" only by 2.
    lookup = lookup_of([7, 8, 1, 5, 6, 7, 8, 2, 9, 6, 7, 8])
    assert lookup.draft(1) == [2]


def test_prompt_lookup_drafts_nothing_for_text_that_repeats_nothing() -> None:
    assert lookup_of(list(range(100))).draft(8) == []
    assert lookup_of([5]).draft(8) == []


def test_prompt_lookup_follows_a_history_that_grows_and_one_that_was_cut() -> None:
    lookup = lookup_of([1, 2, 3, 4, 9])
    lookup.sync([1, 2, 3, 4, 9, 1, 2])
    assert lookup.draft(2) == [3, 4]
    lookup.sync([1, 2, 3, 4, 9, 7, 7])  # another continuation: rebuilt
    assert lookup.draft(2) == []


def test_a_draft_grows_while_kept_and_shrinks_to_what_was_kept() -> None:
    state = DraftState(draft_max=16)
    first = state.length
    state.record(first, first, 16, DraftSource.NGRAM)
    assert state.length == 2 * first
    state.record(2 * first, 2, 16, DraftSource.NGRAM)
    assert state.length == 3
    state.record(3, 3, 16, DraftSource.NGRAM)
    state.record(6, 6, 16, DraftSource.NGRAM)
    assert state.length == 12
    state.record(12, 12, 16, DraftSource.NGRAM)
    assert state.length == 16  # --draft-max


def test_a_request_whose_drafts_fail_pauses_longer_each_time() -> None:
    state = DraftState(draft_max=16)
    pauses = []
    for _ in range(8):
        assert state.may_guess()
        state.record(state.length, 0, 16, DraftSource.NGRAM)
        skipped = 0
        while not state.may_guess():
            skipped += 1
        pauses.append(skipped)
    assert pauses == [1, 2, 4, 8, 16, 32, 32, 32]
    assert max(pauses) == MAX_PAUSE
    # A kept token: the next failure pauses 1 step again.
    state.record(state.length, 1, 16, DraftSource.NGRAM)
    state.record(state.length, 0, 16, DraftSource.NGRAM)
    assert not state.may_guess()
    assert state.may_guess()


def test_failed_grammar_drafts_do_not_pause_prompt_lookup() -> None:
    state = DraftState(draft_max=16)
    state.record(4, 0, 16, DraftSource.GRAMMAR)
    assert state.may_guess()


def test_the_steps_draft_budget_shrinks_with_the_batch() -> None:
    assert draft_budget(1, 512) > draft_budget(8, 512) >= 0
    assert draft_budget(8, 10) == 2  # never past the batch
    assert draft_budget(64, 512) == 0


@pytest.mark.parametrize(
    ("allowed", "previous", "expected"),
    [
        (['"'], "{", '"'),
        ([" ", '"'], ",", " "),  # JSON as usually written: a space after a comma
        ([" ", ":"], '"', ":"),
        ([" ", '"', "}"], ",", None),  # a real choice
        (["a", "b"], "", None),
    ],
)
def test_the_grammar_walk_goes_on_only_where_one_character_is_forced(
    allowed: list[str], previous: str, expected: str | None
) -> None:
    assert _forced(allowed, previous) == expected


def test_drafts_must_be_kept_more_often_to_pay_in_a_larger_batch() -> None:
    bars = [required_acceptance(n) for n in (1, 2, 4, 8, 16)]
    assert bars == sorted(bars)
    assert bars[0] == pytest.approx(EXTRA_TOKEN_COST)
    assert 0.75 < bars[3] < 0.95
    # Where a decode's extra tokens cost little (a GPU), drafts pay at a far lower acceptance.
    assert required_acceptance(8, 0.05) < 0.35 < bars[3]


def test_a_request_below_the_bar_drafts_only_a_short_probe_now_and_then() -> None:
    state = DraftState(draft_max=16)
    state.required = 0.99
    allowed = [state.allowance(8, DraftSource.NGRAM) for _ in range(2 * PROBE_EVERY)]
    assert allowed.count(0) == 2 * PROBE_EVERY - 2
    assert set(allowed) == {0, PROBE_LENGTH}
    state.required = 0.1
    assert state.allowance(8, DraftSource.NGRAM) == 8
