"""The /metrics counters of embedding and rerank requests.

locallab_embedding_requests_total{model, kind}   requests answered (kind: embedding, reranker)
locallab_embedding_inputs_total{model, kind}     inputs (texts, or documents of a rerank)
locallab_embedding_tokens_total{model, kind}     tokens encoded
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class EncodingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "locallab_embedding_requests",
            "Embedding and rerank requests answered, by model and kind",
            ["model", "kind"],
            registry=registry,
        )
        self.inputs = Counter(
            "locallab_embedding_inputs",
            "Inputs embedded (texts), or documents ranked, by model and kind",
            ["model", "kind"],
            registry=registry,
        )
        self.tokens = Counter(
            "locallab_embedding_tokens",
            "Tokens encoded by embedding and rerank requests, by model and kind",
            ["model", "kind"],
            registry=registry,
        )

    def record(self, model: str, kind: str, inputs: int, tokens: int) -> None:
        self.requests.labels(model, kind).inc()
        self.inputs.labels(model, kind).inc(inputs)
        self.tokens.labels(model, kind).inc(tokens)
