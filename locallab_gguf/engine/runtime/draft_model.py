"""A smaller model that drafts for the served one (--draft-model).

It runs in the engine's worker beside the target, with a context of its own that keeps one KV
sequence per slot: each slot's drafts continue the draft model's copy of that slot's tokens,
so a request's prompt is read by the draft model once and each later draft only adds the
tokens the target kept since. Its drafts are its greedy choices; the target verifies them in
the shared step like any other draft (engine/runtime/verify.py), so the answer is the target's
own whatever the draft model says.

A draft model works only where both models cut text into the same tokens: a token id must
mean the same text to both. `check_vocabularies` refuses any other pair when the engine opens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import llama_cpp
import msgspec
import numpy as np

from locallab_gguf.engine.runtime.llama import LlamaModel, create_context, put_token
from locallab_gguf.engine.runtime.prefix import common_prefix
from locallab_gguf.engine.runtime.step import prompt_chunk
from locallab_gguf.engine.types import EngineConfig, FlashAttention, KvCacheType
from locallab_gguf.errors import ModelLoadFailed
from locallab_gguf.sizes import human_bytes

log = logging.getLogger(__name__)


class VocabularyMismatch(ModelLoadFailed):
    """The draft model's tokens are not the target's: its drafts would mean other text."""


def check_vocabularies(target: LlamaModel, draft: LlamaModel) -> None:
    """Refuse a draft model whose token ids do not stand for the target's texts: the same
    tokenizer type, the same number of tokens, the same special tokens and every token's text
    equal (llama-server allows a few extra tokens; verification here works on ids, so any
    difference would turn into wrong drafts)."""

    def refuse(why: str) -> VocabularyMismatch:
        return VocabularyMismatch(
            f"the draft model {draft.path.name} cannot draft for {target.path.name}: {why}; "
            "a draft model must share the served model's vocabulary (a smaller model of the "
            "same family)"
        )

    kinds = [llama_cpp.llama_vocab_type(model.vocab) for model in (target, draft)]
    if kinds[0] != kinds[1]:
        raise refuse(f"its tokenizer is of another type ({kinds[1]} against {kinds[0]})")
    if draft.n_vocab != target.n_vocab:
        raise refuse(f"its vocabulary has {draft.n_vocab:,} tokens against {target.n_vocab:,}")
    for name in ("bos", "eos"):
        ids = [getattr(llama_cpp, f"llama_vocab_{name}")(model.vocab) for model in (target, draft)]
        if ids[0] != ids[1]:
            raise refuse(f"its {name.upper()} token is {ids[1]}, the served model's {ids[0]}")
    for token in range(target.n_vocab):
        texts = [llama_cpp.llama_vocab_get_text(model.vocab, token) for model in (target, draft)]
        if texts[0] != texts[1]:
            raise refuse(f"token {token} is {texts[1]!r} there and {texts[0]!r} here")


class DraftChoice(NamedTuple):
    """What drafts for a model: the draft model, or none and, when one was configured but
    cannot draft for this model, why."""

    model: DraftModel | None
    refused: str | None = None


def open_draft_model(target: LlamaModel, config: EngineConfig) -> DraftChoice:
    """The configured draft model for `target` (none when none is set, speculation is off or
    the model does not generate). It goes where the target's layers go: all on the GPU when the
    target is wholly there, else on the CPU.

    A draft model of another vocabulary is refused for this model alone, which is served
    without it: a server holds models of several families, and one --draft-model suits only
    its own family. The reason is logged and shown with the model (/models/current)."""
    if config.draft_model is None or not config.speculative or config.embedding is not None:
        return DraftChoice(None)
    on_gpu = target.n_gpu_layers >= target.n_layer > 0
    try:
        draft = DraftModel(
            target,
            Path(config.draft_model),
            config,
            config.context_per_slot(target.n_ctx_train),
            n_gpu_layers=-1 if on_gpu else 0,
        )
    except VocabularyMismatch as exc:
        log.warning("%s; %s is served without a draft model", exc, target.path.name)
        return DraftChoice(None, str(exc))
    log.info(
        "draft model %s: %d layers, %s, %s; drafts for %s",
        draft.info.file,
        draft.info.n_layer,
        human_bytes(draft.info.size_bytes),
        "on the GPU" if on_gpu else "on the CPU",
        target.path.name,
    )
    return DraftChoice(draft)


class DraftModelInfo(msgspec.Struct, frozen=True):
    file: str
    n_layer: int
    size_bytes: int
    n_gpu_layers: int


class DraftModel:
    """The draft model, its context and what each slot's KV sequence holds (engine thread)."""

    def __init__(
        self,
        target: LlamaModel,
        path: Path,
        config: EngineConfig,
        per_slot: int,
        n_gpu_layers: int,
    ) -> None:
        self.model = LlamaModel(path, n_gpu_layers=n_gpu_layers)
        try:
            check_vocabularies(target, self.model)
            # Its KV is small and only ever its own: the plain f16 cache, flash attention as
            # llama.cpp sees fit, whatever the target's settings are.
            own = msgspec.structs.replace(
                config,
                cache_type_k=KvCacheType.F16,
                cache_type_v=KvCacheType.F16,
                flash_attn=FlashAttention.AUTO,
                rpc=None,
            )
            self._context = create_context(self.model, own, per_slot, unified=False)
        except BaseException:
            self.model.close()
            raise
        self._memory = llama_cpp.llama_get_memory(self._context)
        # In the deterministic mode its reading follows the target's: the same chunks give its
        # guesses the arithmetic the target's own picks have (a model drafting for itself then
        # guesses exactly what it will pick).
        self._chunk = prompt_chunk(config)
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self._held: list[list[int]] = [[] for _ in range(config.n_parallel)]
        self._last_index = 0  # the batch position of the last decode's logits
        self._eog: dict[int, bool] = {}
        self.info = DraftModelInfo(
            file=path.name,
            n_layer=self.model.n_layer,
            size_bytes=self.model.size_bytes,
            n_gpu_layers=n_gpu_layers,
        )

    def draft(self, seq_id: int, history: Sequence[int], most: int) -> list[int]:
        """Up to `most` tokens the draft model expects after `history` (the slot's tokens,
        its next token last); fewer when it expects the end of the answer."""
        logits = self._catch_up(seq_id, history)
        held = self._held[seq_id]
        drafted: list[int] = []
        while True:
            token = int(np.argmax(logits))
            if self._is_end(token):
                break
            drafted.append(token)
            if len(drafted) >= most:
                break
            self._decode(seq_id, [token], len(held))
            held.append(token)
            logits = self._logits(0)
        return drafted

    def forget(self, seq_id: int) -> None:
        """Drop what a slot's sequence holds (its KV was reset on the target's side)."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        self._held[seq_id] = []

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._context)
        self.model.close()

    def _catch_up(self, seq_id: int, history: Sequence[int]) -> Any:
        """Make the slot's sequence hold `history` and return the logits after its last token.

        Tokens it already holds stay (the target kept them, or they are the same prompt);
        past the first difference its cells go and the rest is read in batches. The last token
        is always read again: its logits are not kept between drafts."""
        held = self._held[seq_id]
        keep = min(common_prefix(held, history), len(history) - 1)
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, keep, -1)
        del held[keep:]
        rest = list(history[keep:])
        while rest:
            chunk, rest = rest[: self._chunk], rest[self._chunk :]
            self._decode(seq_id, chunk, len(held))
            held.extend(chunk)
        return self._logits(self._last_index)

    def _decode(self, seq_id: int, tokens: list[int], position: int) -> None:
        batch = self._batch
        for index, token in enumerate(tokens):
            put_token(batch, index, token, position + index, seq_id, index == len(tokens) - 1)
        batch.n_tokens = len(tokens)
        self._last_index = len(tokens) - 1
        status = llama_cpp.llama_decode(self._context, batch)
        if status != 0:
            # What the failed decode left is unknown: the sequence starts over next time.
            self.forget(seq_id)
            raise RuntimeError(f"the draft model's llama_decode failed with status {status}")

    def _logits(self, index: int) -> Any:
        pointer = llama_cpp.llama_get_logits_ith(self._context, index)
        return np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,))

    def _is_end(self, token: int) -> bool:
        known = self._eog.get(token)
        if known is None:
            known = self._eog[token] = self.model.is_end_of_generation(token)
        return known
