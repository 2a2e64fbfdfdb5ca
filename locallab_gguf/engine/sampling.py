"""A request's sampling parameters -> its own llama.cpp sampler chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import llama_cpp

from locallab_gguf.engine.types import SamplingParams


class Sampler:
    """One request's chain; `sample` picks a token and records it (penalties, RNG state)."""

    def __init__(self, params: SamplingParams, n_vocab: int) -> None:
        self._chain: Any = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        self._penalties: Any = None
        self._penalty_window = params.penalty_last_n
        add = self._add
        if _has_penalties(params):
            self._penalties = add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab,
                    params.penalty_last_n,
                    params.repetition_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if params.temperature <= 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        add(llama_cpp.llama_sampler_init_dist(seed))

    def _add(self, sampler: Any) -> Any:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)
        return sampler

    def remember_prompt(self, tokens: Sequence[int]) -> None:
        """Repetition penalties count the prompt too, as a user of llama.cpp expects."""
        if self._penalties is None:
            return
        for token in tokens[-self._penalty_window :] if self._penalty_window > 0 else tokens:
            llama_cpp.llama_sampler_accept(self._penalties, token)

    def sample(self, context: Any, batch_index: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self._chain, context, batch_index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)  # frees the samplers it holds too
            self._chain = None


def _has_penalties(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    )
