"""Embeddings from a chat model, as Ollama and llama.cpp's server give them: pooled as the GGUF
declares, else by mean; compared with bare llama-cpp-python's in the same run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import ollama
import openai
import pytest
from llama_cpp import Llama

from tests.conftest import DEFAULT_ID
from tests.support.servers import RunningServer

TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply on Monday."]


@pytest.fixture(scope="module")
def bare_vectors(model_path: Path) -> Iterator[np.ndarray]:
    """llama-cpp-python's own mean-pooled vectors of TEXTS (SmolLM2's GGUF declares no
    pooling), without normalization."""
    llama = Llama(
        str(model_path),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=512,
        n_threads=2,
        verbose=False,
    )
    try:
        yield np.array([llama.embed(text, normalize=False) for text in TEXTS], dtype=np.float64)
    finally:
        llama.close()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosines: np.ndarray = (a * b).sum(axis=1) / norms
    return cosines


def test_a_chat_model_answers_openai_embeddings_as_bare_llama_cpp_does(
    server: RunningServer, bare_vectors: np.ndarray
) -> None:
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    answer = oai.embeddings.create(model=DEFAULT_ID, input=TEXTS)
    oai.close()
    vectors = np.array([item.embedding for item in answer.data], dtype=np.float64)
    assert vectors.shape == bare_vectors.shape
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)  # OpenAI's: unit length
    assert np.all(_cosines(vectors, bare_vectors) > 0.999)
    # Two different sentences are two different directions.
    assert _cosines(vectors[:1], vectors[1:])[0] < 0.999
    assert answer.usage.prompt_tokens > 0


def test_a_chat_model_answers_ollamas_embed_and_still_generates(
    server: RunningServer, bare_vectors: np.ndarray
) -> None:
    local = ollama.Client(host=server.url)
    answer = local.embed(model=DEFAULT_ID, input=TEXTS)
    vectors = np.array(answer.embeddings, dtype=np.float64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert np.all(_cosines(vectors, bare_vectors) > 0.999)
    chat = local.chat(
        model=DEFAULT_ID, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3}
    )
    assert chat.done
    local.close()


def test_a_chat_model_still_refuses_to_rerank(server: RunningServer) -> None:
    reply = server.client.post(
        "/v1/rerank", json={"model": DEFAULT_ID, "query": "q", "documents": ["a"]}
    )
    assert reply.status_code == 400
