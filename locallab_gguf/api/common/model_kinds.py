"""What a model is for, checked before a request reaches it: one message for every surface."""

from __future__ import annotations

from locallab_gguf.engine.types import ModelKind
from locallab_gguf.errors import WrongModelKind
from locallab_gguf.models.registry import ModelSpec

_WHAT_IT_DOES: dict[ModelKind, str] = {
    "chat": "a chat model: it generates text (/v1/chat/completions, /api/chat, /generate)",
    "embedding": "an embedding model: it answers /v1/embeddings and /api/embed",
    "reranker": "a reranker: it answers /v1/rerank",
}


def require_kind(spec: ModelSpec, wanted: ModelKind) -> None:
    """WrongModelKind (400) unless `spec` is a model of kind `wanted`."""
    if spec.kind != wanted:
        raise WrongModelKind(
            f"model {spec.id!r} is {_WHAT_IT_DOES[spec.kind]}; this request needs a model of "
            f'kind "{wanted}" (models.toml `kind`)'
        )
