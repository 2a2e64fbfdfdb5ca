"""Embeddings and reranking: the encoding engine and the runner that hosts it."""
