"""Drafts from a grammar: the text it forces next (a JSON key, `": `, a tool call's name).

llama.cpp's grammar sampler says whether it allows a token, not what it expects, so the forced
text is found by asking: a copy of the request's grammar is shown every one-character token
(printable ASCII, newline, tab) and an end-of-generation token; where it allows one character
alone, that character is forced, and the copy takes it and is asked again. The request's own
grammar never moves: it advances only over the tokens the model keeps.

The generated JSON grammars allow one optional space after each literal (`{"a": 1}` and
`{ "a" : 1 }` are both valid); there the walk goes on as JSON is usually written (a space
after `:` and `,`, none elsewhere). That is a guess, so grammar text is a draft the model
checks like any other rather than tokens taken unseen: a wrong guess, or a tokenization the
model would not choose, costs the drafted positions and never changes the answer. For the same
reason the last token of the forced text is not drafted unless the grammar ends there: it may
merge with the free text that follows (`":` then ` "` against `": "`).
"""

from __future__ import annotations

import ctypes
import string
from typing import Any

import llama_cpp
import numpy as np

from locallab_gguf.engine.runtime.grammar import TOKEN_DATA
from locallab_gguf.engine.runtime.llama import LlamaModel

PROBED = string.digits + string.ascii_letters + string.punctuation + " \n\t"
# A space is written after these when the grammar leaves it optional (JSON as usually written).
SPACE_AFTER = (":", ",")
# Characters walked at most per draft token asked for (a token is about 3 characters of JSON).
CHARS_PER_TOKEN = 4


class GrammarProbe:
    """The one-character tokens of a model's vocabulary, to show a grammar all at once."""

    def __init__(self, model: LlamaModel) -> None:
        self._model = model
        chars: list[str] = []
        ids: list[int] = []
        for char in PROBED:
            tokens = model.tokenize(char, add_special=False, parse_special=False)
            if len(tokens) == 1:
                chars.append(char)
                ids.append(tokens[0])
        self._chars = chars
        self._token_of = dict(zip(chars, ids, strict=True))
        end = int(llama_cpp.llama_vocab_eos(model.vocab))
        self._ids = np.array([*ids, end], dtype=np.int32)
        self._candidates = np.zeros(len(self._ids), dtype=TOKEN_DATA)
        self._array = llama_cpp.llama_token_data_array(
            data=self._candidates.ctypes.data_as(llama_cpp.llama_token_data_p)
        )

    def forced_tokens(self, grammar: Any, previous: str, most: int) -> list[int]:
        """Up to `most` tokens of the text `grammar` (a llama.cpp grammar sampler) forces
        after the output so far, which ends in `previous`."""
        text, ended = self.forced_text(grammar, previous, most * CHARS_PER_TOKEN)
        if not text:
            return []
        tokens = self._model.tokenize(text, add_special=False, parse_special=True)
        if not ended:
            tokens = tokens[:-1]
        return tokens[:most]

    def forced_text(self, grammar: Any, previous: str, most_chars: int) -> tuple[str, bool]:
        """(the forced text, whether the grammar may end right after it)."""
        walker = llama_cpp.llama_sampler_clone(grammar)
        text = ""
        try:
            while len(text) < most_chars:
                allowed, may_end = self._allowed(walker)
                if may_end:
                    return text, True
                char = _forced(allowed, (previous + text)[-1:])
                if char is None:
                    break
                text += char
                llama_cpp.llama_sampler_accept(walker, self._token_of[char])
        finally:
            llama_cpp.llama_sampler_free(walker)
        return text, False

    def _allowed(self, grammar: Any) -> tuple[list[str], bool]:
        candidates = self._candidates
        candidates["id"] = self._ids
        candidates["logit"] = 0.0
        candidates["p"] = 0.0
        array = self._array
        array.size = len(self._ids)
        array.selected = -1
        array.sorted = False
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
        # The grammar sets refused tokens' logits to -inf, in place and in order.
        open_ = np.isfinite(candidates["logit"])
        chars = [char for char, ok in zip(self._chars, open_[:-1], strict=True) if ok]
        return chars, bool(open_[-1])


def _forced(allowed: list[str], previous: str) -> str | None:
    """The character to walk on with, or None where the grammar leaves a real choice."""
    if len(allowed) == 1:
        return allowed[0]
    if len(allowed) == 2 and " " in allowed:
        other = allowed[0] if allowed[1] == " " else allowed[1]
        return " " if previous and previous in SPACE_AFTER else other
    return None
