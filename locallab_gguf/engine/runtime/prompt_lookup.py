"""Prompt lookup: drafts copied from what a request has already seen.

An answer that quotes its prompt (an edited file, a RAG answer, JSON that repeats its keys)
goes on the way the text it copies went on. The index maps every n-gram of the request's
prompt and output to the position just after its latest occurrence; the draft is what followed
the longest n-gram that ends the text so far. It grows by a few dictionary entries per token,
so a lookup costs the same at any length, and text that repeats nothing is never drafted.
"""

from __future__ import annotations

from collections.abc import Sequence

# The n-grams matched, longest first. A single token repeats too often to predict anything
# (" the" is followed by everything); four tokens are enough to lock onto a quoted passage.
MIN_NGRAM = 2
MAX_NGRAM = 4


class PromptLookup:
    """One request's text so far (token ids) and the index of its n-grams."""

    __slots__ = ("_history", "_indexed", "_seen")

    def __init__(self) -> None:
        self._history: list[int] = []
        # Per n-gram size: n-gram -> index of the token that followed its latest occurrence.
        self._seen: dict[int, dict[tuple[int, ...], int]] = {
            size: {} for size in range(MIN_NGRAM, MAX_NGRAM + 1)
        }
        self._indexed = 0  # n-grams ending before this index are in `_seen`

    def __len__(self) -> int:
        return len(self._history)

    def sync(self, tokens: Sequence[int]) -> None:
        """Make the history `tokens`: what it holds already is kept, the rest appended, and a
        history that no longer agrees (it was cut) is rebuilt."""
        history = self._history
        if len(tokens) < len(history) or tokens[len(history) - 1 : len(history)] != history[-1:]:
            self.__init__()  # type: ignore[misc]
            history = self._history
        history.extend(tokens[len(history) :])

    def draft(self, most: int) -> list[int]:
        """Up to `most` tokens that followed the longest n-gram ending the history; none when
        it ends in nothing seen before."""
        history = self._history
        self._index_up_to(len(history) - 1)
        end = len(history)
        for size in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if end < size:
                continue
            after = self._seen[size].get(tuple(history[end - size :]))
            if after is not None:
                return history[after : min(after + most, end)]
        return []

    def _index_up_to(self, stop: int) -> None:
        """Index the n-grams ending before `stop`: each one whose next token is known."""
        history, seen = self._history, self._seen
        for end in range(max(self._indexed, 1), stop + 1):
            for size in range(MIN_NGRAM, MAX_NGRAM + 1):
                if end >= size:
                    seen[size][tuple(history[end - size : end])] = end
        self._indexed = max(self._indexed, stop + 1)
