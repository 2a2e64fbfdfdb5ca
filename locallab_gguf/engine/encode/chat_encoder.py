"""Embeddings from a chat model, as Ollama's /api/embed and llama.cpp's server give them.

A chat model's weights can pool its tokens' outputs into a vector as an embedding model
does; what it needs is a context of its own in embeddings mode. `ChatEncoder` opens that
context over the loaded model on the first embedding request (a server that never embeds
with its chat model pays nothing for it) and closes it with the model. The vectors are
pooled as the GGUF declares (`<arch>.pooling_type`), else by mean.
"""

from __future__ import annotations

import threading

from locallab_gguf.engine.encode.embedding import EmbeddingEngine
from locallab_gguf.engine.runtime.llama import LlamaModel
from locallab_gguf.engine.types import EmbeddingMode, EngineConfig, Pooling

# GGUF's enum llama_pooling_type, for the poolings an embedding may use.
_DECLARED_POOLING: dict[str, Pooling] = {"1": "mean", "2": "cls", "3": "last"}


def declared_pooling(model: LlamaModel) -> Pooling | None:
    architecture = model.metadata.get("general.architecture", "")
    return _DECLARED_POOLING.get(model.metadata.get(f"{architecture}.pooling_type", ""))


class ChatEncoder:
    """The embedding engine of one chat model, opened when first asked for."""

    def __init__(self, model: LlamaModel, config: EngineConfig) -> None:
        self._model = model
        self._config = config
        self._lock = threading.Lock()
        self._engine: EmbeddingEngine | None = None
        self._closed = False

    def engine(self) -> EmbeddingEngine:
        """The encoder, opened now if it is not yet (on the caller's thread)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the model is closing")
            if self._engine is None:
                mode = EmbeddingMode(pooling=declared_pooling(self._model) or "mean")
                self._engine = EmbeddingEngine(self._model, self._config, mode, owns_model=False)
            return self._engine

    def close(self, drain: bool) -> None:
        """Before the model closes: the encoder's context goes first."""
        with self._lock:
            self._closed = True
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close(drain)
