"""What a model is for, checked before a request reaches it: one message for every surface."""

from __future__ import annotations

from locallab_gguf.engine.types import ModelKind
from locallab_gguf.errors import WrongModelKind
from locallab_gguf.models.registry import ModelSpec

_WHAT_IT_DOES: dict[ModelKind, str] = {
    "chat": "a chat model: it generates text (/v1/chat/completions, /api/chat, /generate) "
    "and embeds",
    "embedding": "an embedding model: it answers /v1/embeddings and /api/embed",
    "reranker": "a reranker: it answers /v1/rerank",
}


# A chat model embeds too (pooled as its GGUF declares, else by mean), as in Ollama.
_ALSO_SERVED_BY: dict[ModelKind, frozenset[ModelKind]] = {"embedding": frozenset({"chat"})}


def require_kind(spec: ModelSpec, wanted: ModelKind) -> None:
    """WrongModelKind (400) unless `spec` is a model of kind `wanted` (or one that also
    serves it: a chat model answers embedding requests)."""
    if spec.kind != wanted and spec.kind not in _ALSO_SERVED_BY.get(wanted, frozenset()):
        raise WrongModelKind(
            f"model {spec.id!r} is {_WHAT_IT_DOES[spec.kind]}; this request needs a model of "
            f'kind "{wanted}" (models.toml `kind`)'
        )
