"""Output constrained by a GBNF grammar: JSON constraints -> grammars, and their sampling.

llama.cpp's grammar sampler checks every token of the vocabulary against the grammar, which
costs far more than a step of a small model. Like llama.cpp's own tools, `GrammarSampler`
first lets the request's chain pick a token from the plain logits and asks the grammar about
that one token; only when the grammar refuses it is the whole vocabulary constrained and the
token picked again. The grammar usually agrees, so a constrained request runs at nearly the
speed of a free one, and its tokens are the ones a fully constrained pick would give.
"""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Mapping
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import llama_grammar

from locallab_gguf.engine.types import SamplingParams
from locallab_gguf.errors import InvalidRequest

# Laid out as llama.cpp's llama_token_data, so the array can be handed to the samplers as is.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def json_grammar(schema: Mapping[str, Any] | None) -> str:
    """A grammar for any JSON object (`schema` None), or for JSON that `schema` accepts."""
    if schema is None:
        return str(llama_grammar.JSON_GBNF)
    try:
        return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    # The converter signals an unsupported or broken schema with whatever a lookup raised.
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError, RecursionError) as exc:
        raise InvalidRequest(
            f"the JSON schema cannot be turned into a grammar ({type(exc).__name__}: {exc}); "
            "use the JSON Schema subset of types, properties, required, items, enum and $ref "
            "to local definitions"
        ) from exc


def grammar_of(params: SamplingParams) -> str | None:
    """The GBNF grammar a request's output must match, if any."""
    if params.grammar is not None:
        return params.grammar
    if params.json_output is not None:
        schema = params.json_output.schema
        return json_grammar(None if schema is None else json.loads(schema))
    return None


class GrammarSampler:
    """One request's grammar; `sample` picks the chain's token among those the grammar allows."""

    def __init__(self, grammar: str, vocab: Any, n_vocab: int) -> None:
        self._sampler: Any = self._create(grammar, vocab)
        if not self._sampler:
            raise InvalidRequest(
                "llama.cpp could not parse the grammar (its reason is in the server log); "
                "a GBNF grammar needs a rule named root"
            )
        self._n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._candidates = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._all = llama_cpp.llama_token_data_array(
            data=self._candidates.ctypes.data_as(llama_cpp.llama_token_data_p)
        )
        self._one = (llama_cpp.llama_token_data * 1)()
        self._single = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self._one, llama_cpp.llama_token_data_p)
        )

    def _create(self, grammar: str, vocab: Any) -> Any:
        return llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")

    def sample(self, chain: Any, context: Any, batch_index: int) -> int:
        """Pick, then accept the token in the grammar and in `chain` (penalties, RNG)."""
        pointer = llama_cpp.llama_get_logits_ith(context, batch_index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        token = self._pick(chain, logits, constrained=False)
        if not self._allows(token):
            token = self._pick(chain, logits, constrained=True)
        llama_cpp.llama_sampler_accept(self._sampler, token)
        llama_cpp.llama_sampler_accept(chain, token)
        return token

    def close(self) -> None:
        if self._sampler is not None:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def _pick(self, chain: Any, logits: Any, *, constrained: bool) -> int:
        # The samplers sort and shrink the array in place: every pick starts afresh.
        candidates = self._candidates
        candidates["id"] = self._ids
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = self._all
        array.size = self._n_vocab
        array.selected = -1
        array.sorted = False
        if constrained:
            llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
        return int(array.data[array.selected].id)

    def _allows(self, token: int) -> bool:
        self._one[0] = llama_cpp.llama_token_data(token, 1.0, 0.0)
        self._single.size = 1
        self._single.selected = -1
        self._single.sorted = False
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(self._single))
        return not math.isinf(self._one[0].logit)
