"""Log-probabilities of generated tokens, read from the model's logits before sampling.

Only requests that ask for them pay for this: a softmax over the whole vocabulary per token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from locallab_gguf.engine.types import TokenChoice, TokenLogprobs


class StepDistribution:
    """The model's log-probabilities over the vocabulary at one step of one request."""

    __slots__ = ("_logprobs", "_top")

    def __init__(self, logprobs: npt.NDArray[np.float64], top: npt.NDArray[np.intp]) -> None:
        self._logprobs = logprobs
        self._top = top

    def entry(self, token: int, piece: Callable[[int], bytes]) -> TokenLogprobs:
        """The sampled `token`'s log-probability and the most likely tokens at this step."""
        logprobs = self._logprobs
        top = tuple(TokenChoice(piece(int(t)), float(logprobs[t])) for t in self._top)
        return TokenLogprobs(piece(token), float(logprobs[token]), top)


def read_distribution(context: Any, batch_index: int, n_vocab: int, top_n: int) -> StepDistribution:
    """Must run before the sampler, while the logits at `batch_index` are this step's."""
    pointer = llama_cpp.llama_get_logits_ith(context, batch_index)
    # A copy in double precision: the context's buffer is overwritten by the next decode.
    logits = np.ctypeslib.as_array(pointer, shape=(n_vocab,)).astype(np.float64)
    shifted = logits - logits.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())
    if top_n <= 0:
        return StepDistribution(logprobs, np.empty(0, dtype=np.intp))
    top = np.argpartition(-logprobs, top_n - 1)[:top_n]
    return StepDistribution(logprobs, top[np.argsort(-logprobs[top], kind="stable")])
