"""A request's sampling parameters -> its own llama.cpp sampler chain."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp
import numpy as np

from locallab_gguf.engine.runtime.grammar import GrammarSampler, grammar_of
from locallab_gguf.engine.tools.grammars import ToolGrammar
from locallab_gguf.engine.tools.lazy_grammar import LazyGrammarSampler
from locallab_gguf.engine.types import SamplingParams
from locallab_gguf.errors import InvalidRequest

# Below this temperature a request samples greedily. At 0.001 a token whose logit is 0.01
# under the top one has probability e^-10 (1 in 22,000), so sampling is greedy in all but
# name; far below it, logits divided by the temperature overflow float32 (at 1e-38 every logit
# becomes +-inf and the sampler picks whatever is first: garbage, or a token the grammar
# forbids).
GREEDY_BELOW_TEMPERATURE = 1e-3
# llama.cpp's samplers take a 32-bit seed, and read 0xFFFFFFFF as "pick one at random".
_SEEDS = 0xFFFFFFFF  # seeds 0 .. 0xFFFFFFFE
_MASK64 = (1 << 64) - 1


class Sampler:
    """One request's chain; `sample` picks a token and records it (penalties, RNG state).

    Raises InvalidRequest for a logit bias outside the vocabulary or a grammar llama.cpp
    cannot parse.
    """

    def __init__(
        self,
        params: SamplingParams,
        vocab: Any,
        n_vocab: int,
        tool_grammar: ToolGrammar | None = None,
    ) -> None:
        _check_logit_bias(params.logit_bias, n_vocab)
        self._chain: Any = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        self._penalties: Any = None
        self._penalty_window = params.penalty_last_n
        self._grammar: GrammarSampler | None = None
        self._dist: Any = None
        self._n_vocab = n_vocab
        self._picks = 0  # chain picks: each draws one number from the RNG of `_dist`
        try:
            self._build(params, vocab, n_vocab, tool_grammar)
        except BaseException:
            self.close()
            raise
        # Plain greedy needs nothing from the chain but the largest logit.
        self._argmax_only = (
            params.temperature < GREEDY_BELOW_TEMPERATURE
            and not params.logit_bias
            and self._penalties is None
            and self._grammar is None
        )

    def _build(
        self, params: SamplingParams, vocab: Any, n_vocab: int, tool_grammar: ToolGrammar | None
    ) -> None:
        add = self._add
        if params.logit_bias:
            add(_logit_bias_sampler(params.logit_bias, n_vocab))
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
        grammar = grammar_of(params)
        if tool_grammar is not None:
            # A request's calls: the whole answer, or (lazily) from a call's opening on.
            self._grammar = (
                LazyGrammarSampler(tool_grammar, vocab, n_vocab)
                if tool_grammar.trigger_patterns
                else GrammarSampler(tool_grammar.gbnf, vocab, n_vocab)
            )
        elif grammar is not None:
            # Kept out of the chain: it is asked about the chain's pick (see grammar.py).
            self._grammar = GrammarSampler(grammar, vocab, n_vocab)
        if params.temperature < GREEDY_BELOW_TEMPERATURE:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else llama_seed(params.seed)
        self._dist = add(llama_cpp.llama_sampler_init_dist(seed))

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
        if self._argmax_only:
            # The chain copies every logit into a candidate array to find the largest; reading
            # them in place picks the same token (the first of equals) in a fifth of the time.
            logits = llama_cpp.llama_get_logits_ith(context, batch_index)
            return int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
        if self._grammar is not None:
            return self._grammar.sample(self._chain, context, batch_index)
        self._picks += 1
        return int(llama_cpp.llama_sampler_sample(self._chain, context, batch_index))

    @property
    def grammar(self) -> Any:
        """llama.cpp's sampler of the request's grammar, None without one."""
        return None if self._grammar is None else self._grammar.handle

    @property
    def rng_draws(self) -> int:
        """How many numbers the RNG has drawn: llama.cpp's dist sampler draws one per pick,
        and a grammar picks twice when it refuses the chain's first choice."""
        return self._picks + (self._grammar.picks if self._grammar is not None else 0)

    def resume(self, completion: Sequence[int], rng_draws: int) -> None:
        """Bring a new chain to the state of one that produced `completion`: its grammar has
        accepted those tokens and its RNG has drawn `rng_draws` numbers, so a seeded request
        goes on as if nothing had happened. (Penalties see the completion through
        `remember_prompt`, which a resumed request is given prompt and completion to.)"""
        if self._grammar is not None:
            for token in completion:
                self._grammar.accept(token)
        if self._dist is not None:
            one = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(0, 0.0, 0.0))
            array = llama_cpp.llama_token_data_array(
                data=ctypes.cast(one, llama_cpp.llama_token_data_p), size=1
            )
            for _ in range(rng_draws):
                # With one candidate, dist still draws its number (to stay aligned with
                # llama.cpp's backend sampling), which is all this is for.
                llama_cpp.llama_sampler_apply(self._dist, ctypes.byref(array))
        self._picks = rng_draws

    def close(self) -> None:
        if self._grammar is not None:
            self._grammar.close()
            self._grammar = None
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)  # frees the samplers it holds too
            self._chain = None


def llama_seed(seed: int) -> int:
    """A request's seed (any 64-bit integer) as a seed llama.cpp keeps: 0 to 0xFFFFFFFE.

    Seeds in that range are used as they are; any other (negative, or 0xFFFFFFFF and above,
    which llama.cpp would read as "random" or cut to its low 32 bits) is mixed with all of its
    bits into that range, so it repeats its own sample every time.
    """
    if 0 <= seed < _SEEDS:
        return seed
    # splitmix64's finalizer: every input bit moves about half of the output bits.
    mixed = seed & _MASK64
    mixed = ((mixed ^ (mixed >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (mixed ^ (mixed >> 31)) % _SEEDS


def _check_logit_bias(biases: Sequence[tuple[int, float]], n_vocab: int) -> None:
    for token, _ in biases:
        if not 0 <= token < n_vocab:
            raise InvalidRequest(
                f"logit_bias names token {token}, but the model's vocabulary has {n_vocab:,} "
                f"tokens (ids 0 to {n_vocab - 1}); use token ids of this model's tokenizer"
            )


def _logit_bias_sampler(biases: Sequence[tuple[int, float]], n_vocab: int) -> Any:
    entries = (llama_cpp.llama_logit_bias * len(biases))()
    for entry, (token, bias) in zip(entries, biases, strict=True):
        entry.token = token
        entry.bias = bias
    # llama.cpp copies the entries, so the array need not outlive this call.
    return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), entries)


def _has_penalties(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    )
