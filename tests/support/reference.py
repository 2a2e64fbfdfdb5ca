"""What llama-cpp-python itself answers, on this machine, in this run: what model text is
checked against.

Greedy output depends on the SIMD kernels llama.cpp picks for the CPU it runs on (AVX2,
AVX-512, AMX): one machine answers "The capital of France is Paris.", the next one another
sentence. So no test compares model text with a literal. It compares with this reference,
or with the same request sent alone, or it forces the text (a grammar, a stop string cut
from an answer of the same run). `make test LLAMA_CPU=baseline` runs the suite against a
build with other kernels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from llama_cpp import Llama

from locallab_gguf.settings import Settings


class Answer(NamedTuple):
    text: str
    finish_reason: str
    prompt_tokens: int  # the tokenizer's own count of the prompt, as llama-cpp-python renders it
    completion_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        """In the shape of a usage body."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Reference:
    """llama-cpp-python's own high-level API, greedy, configured as the server configures
    llama.cpp: the same threads and flash attention on. (The attention kernel changes the last
    bits of the logits, and greedy decoding amplifies any difference.)"""

    def __init__(self, llama: Llama, default_max_tokens: int) -> None:
        self._llama = llama
        self._default_max_tokens = default_max_tokens

    @classmethod
    @contextmanager
    def open(cls, model_path: Path, settings: Settings) -> Iterator[Reference]:
        llama = Llama(
            str(model_path),
            n_ctx=settings.ctx or 1024,
            n_threads=settings.threads,
            n_threads_batch=settings.threads_batch,
            flash_attn=True,
            verbose=False,
        )
        try:
            yield cls(llama, settings.default_max_tokens)
        finally:
            llama.close()

    def complete(self, prompt: str, max_tokens: int) -> Answer:
        """The greedy continuation of a raw prompt (/generate, /v1/completions)."""
        done: Any = self._llama.create_completion(prompt, max_tokens=max_tokens, temperature=0)
        return _answer(done["choices"][0]["text"], done)

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        max_tokens: int | None = None,
        *,
        json_object: bool = False,
    ) -> Answer:
        """The greedy answer through the model's own chat template; `max_tokens` None is the
        server's default, so the answer is the one a request without a limit gets."""
        done: Any = self._llama.create_chat_completion(
            list(messages),  # type: ignore[arg-type]
            max_tokens=max_tokens or self._default_max_tokens,
            temperature=0,
            response_format={"type": "json_object"} if json_object else None,
        )
        return _answer(done["choices"][0]["message"]["content"], done)

    def token_id(self, piece: str) -> int | None:
        """The id of the one token whose text is `piece`, if there is one."""
        tokens = self._llama.tokenize(piece.encode(), add_bos=False, special=False)
        if len(tokens) == 1 and self._llama.detokenize(tokens) == piece.encode():
            return int(tokens[0])
        return None


def _answer(text: str, done: Any) -> Answer:
    usage = done["usage"]
    return Answer(
        text=text,
        finish_reason=done["choices"][0]["finish_reason"],
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
    )


def word_inside(text: str) -> str:
    """A word from the second half of `text`, with its leading space, that first occurs
    there: a stop string that leaves a non-empty answer before it, whatever the text."""
    words = text.split(" ")
    for index in range(max(1, len(words) // 2), len(words)):
        word = " " + words[index]
        position = len(" ".join(words[:index]))
        if words[index] and position > 0 and text.index(word) == position:
            return word
    raise AssertionError(f"no word in the second half of {text!r} to stop at")


def across_pieces(pieces: Sequence[str]) -> str:
    """A string that begins in one streamed piece and ends in the next (the last character of
    one and the first two of the next), first occurring there, from the second half."""
    text = "".join(pieces)
    start = 0
    starts = []
    for piece in pieces:
        starts.append(start)
        start += len(piece)
    for index in range(max(1, len(pieces) // 2), len(pieces)):
        before, after = pieces[index - 1], pieces[index]
        if before.strip() and len(after.strip()) >= 2:
            candidate = before[-1] + after[:2]
            if text.index(candidate) == starts[index] - 1:
                return candidate
    raise AssertionError(f"no two pieces of {list(pieces)!r} to stop across")
