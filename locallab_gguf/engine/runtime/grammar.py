"""Output constrained by a GBNF grammar: JSON constraints -> grammars, and their sampling.

llama.cpp's grammar sampler checks every token of the vocabulary against the grammar, which
costs far more than a step of a small model. Like llama.cpp's own tools, `GrammarSampler`
first lets the request's chain pick a token from the plain logits and asks the grammar about
that one token; only when the grammar refuses it is the whole vocabulary constrained and the
token picked again. The grammar usually agrees, so a constrained request runs at nearly the
speed of a free one, and its tokens are the ones a fully constrained pick would give.

A grammar is bounded before llama.cpp sees it (`GrammarLimits`): a JSON Schema repetition of
20,000 (`maxLength`, `maxItems`, a `{0,20000}` in a pattern) crashes llama.cpp's grammar parser,
and the cost of constraining the whole vocabulary grows with the alternatives alive at a step
(an enum of 20,000 strings takes seconds a step, on the thread every request shares).
Grammars are compiled in `submit`, never on the engine thread.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import llama_grammar

from locallab_gguf.engine.types import SamplingParams
from locallab_gguf.errors import InvalidRequest

# Laid out as llama.cpp's llama_token_data, so the array can be handed to the samplers as is.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


# Measured on a 2-core x86-64 machine with SmolLM2's 49,152-token vocabulary (README, "JSON
# output"): a repetition of 1,000 compiles in about 20 ms and one of 1,500 is already refused by
# llama.cpp's parser (20,000 crashes it); constraining the vocabulary at a step where every
# alternative of an enum is alive costs about 0.45 ms per alternative (256: 115 ms, 20,000:
# seconds); 500 properties (18 KB of schema) compile in 15 ms; a grammar of 256 KB takes about
# 100 ms to compile.
MAX_REPEAT = 1000  # maxLength, minLength, maxItems, minItems, and {m,n} in a pattern
MAX_ENUM = 256  # values of one enum
MAX_SCHEMA_DEPTH = 64  # nesting of the schema document (objects and arrays)
MAX_SCHEMA_BYTES = 32 * 1024  # the schema as JSON text
MAX_GRAMMAR_BYTES = 256 * 1024  # the GBNF grammar, given or converted from a schema

_REPEAT_KEYWORDS = ("maxLength", "minLength", "maxItems", "minItems")
# A regex quantifier {m}, {m,} or {m,n}: the converter spells each repetition out.
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")


class GrammarLimitExceeded(InvalidRequest):
    """A schema or grammar above one of the limits; the message names the limit and value."""


class NoTokenAllowed(InvalidRequest):
    """At this step the grammar allows no token that the request's other settings leave
    possible (say, it must end the output, and logit_bias bans the end-of-generation tokens)."""


def check_schema_text(schema: str) -> Any:
    """The schema (JSON text) decoded, once it is within the limits; raises
    GrammarLimitExceeded naming the limit and the value."""
    decoded = check_schema_size_and_depth(schema)
    check_schema_limits(decoded)
    return decoded


def check_schema_size_and_depth(schema: str) -> Any:
    """The schema (JSON text) decoded, once its size and nesting are within the limits (a
    tool's schema is loosened to the other limits rather than refused: tools/schema_fit.py)."""
    size = len(schema.encode())
    if size > MAX_SCHEMA_BYTES:
        raise _over("the JSON schema is", f"{size:,} bytes", f"{MAX_SCHEMA_BYTES:,} bytes")
    try:
        decoded = json.loads(schema)
    except RecursionError:
        raise _over("the JSON schema nests", "too deep", f"{MAX_SCHEMA_DEPTH} levels") from None
    for path, depth, _ in _walk(decoded):
        _check_depth(path, depth)
    return decoded


def _check_depth(path: str, depth: int) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise _over(
            f"the JSON schema nests at {path or '/'}",
            f"{depth} levels deep",
            f"{MAX_SCHEMA_DEPTH} levels",
        )


def check_schema_limits(schema: Any) -> None:
    """Raises GrammarLimitExceeded for the first value of `schema` above a limit."""
    for path, depth, node in _walk(schema):
        _check_depth(path, depth)
        if not isinstance(node, dict):
            continue
        for keyword in _REPEAT_KEYWORDS:
            value = node.get(keyword)
            if isinstance(value, int | float) and value > MAX_REPEAT:
                raise _over(f"{keyword} at {path or '/'} is", f"{value:,}", f"{MAX_REPEAT:,}")
        enum = node.get("enum")
        if isinstance(enum, list) and len(enum) > MAX_ENUM:
            raise _over(f"the enum at {path or '/'} has", f"{len(enum):,} values", f"{MAX_ENUM:,}")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for match in _QUANTIFIER.finditer(pattern):
                count = max(int(number) for number in match.groups() if number)
                if count > MAX_REPEAT:
                    raise _over(
                        f"the pattern at {path or '/'} repeats {match.group(0)}:",
                        f"{count:,} times",
                        f"{MAX_REPEAT:,}",
                    )


def _walk(schema: Any) -> Iterator[tuple[str, int, Any]]:
    """(JSON pointer, depth, value) of every object and array in `schema`, without recursion
    (a schema nested deeper than Python's stack must be refused, not crash the check)."""
    stack: list[tuple[str, int, Any]] = [("", 1, schema)]
    while stack:
        path, depth, node = stack.pop()
        if isinstance(node, dict):
            yield path, depth, node
            stack.extend((f"{path}/{key}", depth + 1, value) for key, value in node.items())
        elif isinstance(node, list):
            yield path, depth, node
            stack.extend((f"{path}/{index}", depth + 1, value) for index, value in enumerate(node))


def _over(what: str, value: str, limit: str) -> GrammarLimitExceeded:
    return GrammarLimitExceeded(
        f"{what} {value}; this server allows at most {limit} (larger grammars crash or stall "
        "llama.cpp's grammar sampler). Simplify the schema."
    )


def check_grammar_size(grammar: str) -> None:
    size = len(grammar.encode())
    if size > MAX_GRAMMAR_BYTES:
        raise _over("the grammar is", f"{size:,} bytes", f"{MAX_GRAMMAR_BYTES:,} bytes")


# llama-cpp-python's schema converter lets a string hold any character but `"` and `\`, raw
# control characters included, which no JSON parser accepts (llama.cpp's own converter and the
# JSON grammar leave them out): a model once wrote a newline inside a `json_schema` string.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def schema_gbnf(schema: Mapping[str, Any]) -> str:
    """llama-cpp-python's grammar for JSON that `schema` accepts, its strings kept to JSON's
    own characters; raises what the converter raises for a schema it cannot follow."""
    return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema))).replace(
        _LOOSE_CHAR, _STRICT_CHAR
    )


def json_grammar(schema: Mapping[str, Any] | None) -> str:
    """A grammar for any JSON object (`schema` None), or for JSON that `schema` accepts."""
    if schema is None:
        return str(llama_grammar.JSON_GBNF)
    check_schema_limits(schema)
    try:
        grammar = schema_gbnf(schema)
    # The converter signals an unsupported or broken schema with whatever a lookup raised.
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError, RecursionError) as exc:
        raise InvalidRequest(
            f"the JSON schema cannot be turned into a grammar ({type(exc).__name__}: {exc}); "
            "use the JSON Schema subset of types, properties, required, items, enum and $ref "
            "to local definitions"
        ) from exc
    check_grammar_size(grammar)
    return grammar


def grammar_of(params: SamplingParams) -> str | None:
    """The GBNF grammar a request's output must match, if any, within the limits above."""
    if params.grammar is not None:
        check_grammar_size(params.grammar)
        return params.grammar
    if params.json_output is not None:
        schema = params.json_output.schema
        return json_grammar(None if schema is None else check_schema_text(schema))
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
        self.picks = 0  # the chain's picks, each of which draws from its RNG
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._candidates = np.zeros(n_vocab, dtype=TOKEN_DATA)
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
        """Pick, then accept the token in the grammar and in `chain` (penalties, RNG).

        Raises NoTokenAllowed when the grammar leaves no token the chain may pick: accepting a
        token the grammar refuses aborts llama.cpp, so nothing is accepted then.
        """
        pointer = llama_cpp.llama_get_logits_ith(context, batch_index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        token, logit = self._pick(chain, logits, constrained=False)
        if not (_possible(logit) and self._allows(token)):
            token, logit = self._pick(chain, logits, constrained=True)
            # Every token the grammar allows may be banned (-inf) by the chain, and a chain
            # picking among nothing but -inf returns some token regardless: check it again.
            if not (_possible(logit) and self._allows(token)):
                raise NoTokenAllowed(
                    "the output's grammar (response_format or grammar) allows no token at this "
                    "point that the request's other settings leave possible (logit_bias may ban "
                    "every token it allows, such as the end of the output); the request ended"
                )
        llama_cpp.llama_sampler_accept(self._sampler, token)
        llama_cpp.llama_sampler_accept(chain, token)
        return token

    @property
    def handle(self) -> Any:
        """llama.cpp's grammar sampler (to copy, never to advance: see grammar_drafts.py)."""
        return self._sampler

    def accept(self, token: int) -> None:
        """Advance the grammar over a token it allowed before (a resumed request's own)."""
        llama_cpp.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler is not None:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def _pick(self, chain: Any, logits: Any, *, constrained: bool) -> tuple[int, float]:
        """The chain's token and its logit after the chain (and the grammar) adjusted it."""
        # The samplers sort and shrink the array in place: every pick starts afresh.
        self.picks += 1
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
        if not 0 <= array.selected < array.size:
            return -1, -math.inf  # the chain picked nothing: no token is possible
        picked = array.data[array.selected]
        return int(picked.id), float(picked.logit)

    def _allows(self, token: int) -> bool:
        if not 0 <= token < self._n_vocab:
            return False
        self._one[0] = llama_cpp.llama_token_data(token, 1.0, 0.0)
        self._single.size = 1
        self._single.selected = -1
        self._single.sorted = False
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(self._single))
        return not math.isinf(self._one[0].logit)


def _possible(logit: float) -> bool:
    """A banned token's logit is -inf; a chain that picked among bans may also leave NaN."""
    return not (math.isnan(logit) or logit == -math.inf)
