"""A model's tokenizer, as llama.cpp's server offers it at /tokenize and /detokenize.

Both runners call these with their engine's model; the model tokenizes while its context
decodes, so neither waits for a generation step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from locallab_gguf.engine.runtime.llama import LlamaModel
from locallab_gguf.errors import TokenNotInVocabulary


def tokenize_text(
    model: LlamaModel, text: str, *, add_special: bool, parse_special: bool
) -> list[int]:
    """The ids of `text`; `add_special` adds the tokens the model puts around every text (its
    BOS, where it has one); `parse_special` reads control-token text such as <|im_start|> as
    that token rather than as characters."""
    return model.tokenize(text, add_special, parse_special)


def token_pieces(model: LlamaModel, tokens: Sequence[int]) -> list[bytes]:
    """The bytes each token stands for (control tokens as their text); one piece may hold
    part of a character whose other bytes are in the next pieces."""
    n_vocab = model.n_vocab
    for index, token in enumerate(tokens):
        if not 0 <= token < n_vocab:
            raise TokenNotInVocabulary(f"tokens[{index}]", token, model.path.name, n_vocab)
    return [model.rendered_piece(token) for token in tokens]


class InProcessTokenizer:
    """The tokenizer calls of an engine client whose model is in this process (the thread
    runners of both engines): run on a thread, off the event loop."""

    def __init__(self, model: LlamaModel) -> None:
        self._model = model

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return await asyncio.to_thread(
            tokenize_text,
            self._model,
            text,
            add_special=add_special,
            parse_special=parse_special,
        )

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        return await asyncio.to_thread(token_pieces, self._model, tokens)
