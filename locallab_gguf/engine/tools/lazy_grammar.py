"""A grammar that waits for its trigger: llama.cpp's lazy grammar, sampled like any other."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

from locallab_gguf.engine.runtime.grammar import GrammarSampler
from locallab_gguf.engine.tools.grammars import ToolGrammar


class LazyGrammarSampler(GrammarSampler):
    """Allows every token until the generated text matches one of the trigger patterns; from
    the match on, only what the grammar accepts. Until then it rejects no token, so the
    check-the-pick-first path of GrammarSampler costs one cheap test per token."""

    def __init__(self, grammar: ToolGrammar, vocab: Any, n_vocab: int) -> None:
        self._patterns = grammar.trigger_patterns
        super().__init__(grammar.gbnf, vocab, n_vocab)

    def _create(self, grammar: str, vocab: Any) -> Any:
        encoded = [pattern.encode() for pattern in self._patterns]
        patterns = (ctypes.c_char_p * len(encoded))(*encoded)
        return llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            vocab, grammar.encode(), b"root", patterns, len(encoded), None, 0
        )
