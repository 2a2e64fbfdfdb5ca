"""POST /tokenize and /detokenize through real servers: the ids llama-cpp-python's own
tokenizer gives for the same model, text back from ids, pieces, the model's BOS, ids outside
the vocabulary, and the model a request names (Gemma 3 270M, tests/support/two_models.py)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp
import msgspec
import pytest
from llama_cpp import Llama
from prometheus_client.parser import text_string_to_metric_families

from locallab_gguf.engine.worker.process_runner import WorkerEngine
from locallab_gguf.models.files import ModelFiles
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.servers import RunningServer, wait_until
from tests.support.two_models import (
    GEMMA_FILE,
    GEMMA_ID,
    GEMMA_REPO,
    SMOLLM2_SHA,
    assembled_gemma,
    hub_cache_with,
    two_model_registry,
)

TEXTS = {
    "ascii": "Hello, world! The quick brown fox jumps over the lazy dog.",
    "emoji": "Llamas 🦙 love emoji 😀👍🏽 and flags 🇫🇷",
    "cjk": "日本語のテキスト、中文文本和한국어 텍스트",
}
CHAT_MARKUP = "<|im_start|>user\nHi<|im_end|>"


def open_vocabulary(path: Path) -> Llama:
    return Llama(str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def bare(model_path: Path) -> Iterator[Llama]:
    """llama-cpp-python's own tokenizer for the default model."""
    llama = open_vocabulary(model_path)
    yield llama
    llama.close()


def tokenize(server: RunningServer, content: str | list[str | int], **options: object) -> list[Any]:
    reply = server.client.post("/tokenize", json={"content": content, **options})
    assert reply.status_code == 200, reply.text
    assert list(reply.json()) == ["tokens"]
    tokens: list[Any] = reply.json()["tokens"]
    return tokens


def detokenize(server: RunningServer, tokens: list[int], **options: object) -> str:
    reply = server.client.post("/detokenize", json={"tokens": tokens, **options})
    assert reply.status_code == 200, reply.text
    assert list(reply.json()) == ["content"]
    content: str = reply.json()["content"]
    return content


def piece_bytes(piece: str | list[int]) -> bytes:
    return piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_token_ids_are_llama_cpp_pythons_for_the_same_text(
    server: RunningServer, bare: Llama, text: str
) -> None:
    assert tokenize(server, text) == bare.tokenize(text.encode(), add_bos=False, special=True)


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_detokenize_gives_the_text_back(server: RunningServer, text: str) -> None:
    tokens = tokenize(server, text)
    assert all(isinstance(token, int) for token in tokens)
    assert detokenize(server, tokens) == text


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_pieces_join_into_the_text_and_split_characters_come_as_bytes(
    server: RunningServer, bare: Llama, text: str
) -> None:
    with_pieces = tokenize(server, text, with_pieces=True)
    assert [entry["id"] for entry in with_pieces] == tokenize(server, text)
    pieces = [entry["piece"] for entry in with_pieces]
    assert b"".join(piece_bytes(piece) for piece in pieces) == text.encode()
    for token, piece in zip(tokenize(server, text), pieces, strict=True):
        expected = bare.detokenize([token], special=True)
        try:
            assert piece == expected.decode("utf-8")
        except UnicodeDecodeError:
            assert piece == list(expected), f"{token}: bytes that are not text on their own"


def test_a_character_split_across_tokens_has_byte_pieces(server: RunningServer) -> None:
    pieces = [entry["piece"] for entry in tokenize(server, TEXTS["emoji"], with_pieces=True)]
    # SmolLM2's byte-level vocabulary has no token for 🦙: some piece holds part of it.
    assert any(isinstance(piece, list) for piece in pieces)
    assert all(0 <= byte <= 255 for piece in pieces if isinstance(piece, list) for byte in piece)


def test_control_token_text_is_one_token_unless_parse_special_is_false(
    server: RunningServer, bare: Llama
) -> None:
    parsed = tokenize(server, CHAT_MARKUP)
    literal = tokenize(server, CHAT_MARKUP, parse_special=False)
    assert parsed == bare.tokenize(CHAT_MARKUP.encode(), add_bos=False, special=True)
    assert literal == bare.tokenize(CHAT_MARKUP.encode(), add_bos=False, special=False)
    assert len(literal) > len(parsed)
    # Control tokens read back as their text, as llama.cpp's server gives them.
    assert detokenize(server, parsed) == CHAT_MARKUP
    pieces = tokenize(server, CHAT_MARKUP, with_pieces=True)
    assert pieces[0] == {"id": parsed[0], "piece": "<|im_start|>"}


def test_add_special_adds_what_the_models_own_tokenizer_adds(
    server: RunningServer, bare: Llama
) -> None:
    text = TEXTS["ascii"]
    assert tokenize(server, text, add_special=True) == bare.tokenize(
        text.encode(), add_bos=True, special=True
    )


def test_a_list_of_texts_and_ids_tokenizes_the_texts_and_keeps_the_ids(
    server: RunningServer, bare: Llama
) -> None:
    def bare_ids(text: str, bos: bool = False) -> list[int]:
        return list(bare.tokenize(text.encode(), add_bos=bos, special=True))

    hello, world = TEXTS["ascii"], TEXTS["cjk"]
    mixed = tokenize(server, [hello, 42, world, 7])
    assert mixed == [*bare_ids(hello), 42, *bare_ids(world), 7]
    # The model's BOS, if asked for, only before a first item that is text.
    with_bos = tokenize(server, [hello, 42], add_special=True)
    assert with_bos == [*bare_ids(hello, bos=True), 42]
    assert tokenize(server, [42, hello], add_special=True) == [42, *bare_ids(hello)]
    pieces = tokenize(server, ["Hi", 42], with_pieces=True)
    assert pieces[-1] == {"id": 42, "piece": bare.detokenize([42], special=True).decode()}
    n_vocab = bare.n_vocab()
    reply = server.client.post("/tokenize", json={"content": ["Hi", n_vocab]})
    assert reply.status_code == 400
    assert "content[1]" in reply.json()["detail"] and str(n_vocab) in reply.json()["detail"]


def test_empty_content_has_no_tokens_and_no_ids_no_text(server: RunningServer) -> None:
    assert tokenize(server, "") == []
    assert tokenize(server, "", with_pieces=True) == []
    assert detokenize(server, []) == ""


def test_an_id_outside_the_vocabulary_is_a_400_naming_its_index(
    server: RunningServer, bare: Llama
) -> None:
    n_vocab = bare.n_vocab()
    reply = server.client.post("/detokenize", json={"tokens": [1, 2, n_vocab, 3]})
    assert reply.status_code == 400
    detail = reply.json()["detail"]
    assert "tokens[2]" in detail and str(n_vocab) in detail
    # Below zero is outside every vocabulary: the schema itself refuses it.
    reply = server.client.post("/detokenize", json={"tokens": [5, -1]})
    assert reply.status_code == 400
    assert "tokens[1]" in reply.json()["detail"]
    assert detokenize(server, [n_vocab - 1]) is not None  # the last id is in


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/tokenize", {}, "content"),
        ("/tokenize", {"content": 5}, "content"),
        ("/tokenize", {"content": ["hi", -1]}, "content[1]"),
        ("/tokenize", {"content": ["hi", [1]]}, "content[1]"),
        ("/tokenize", {"content": "hi", "with_pieces": "yes"}, "with_pieces"),
        ("/tokenize", {"content": "hi", "add_special": 1}, "add_special"),
        ("/detokenize", {}, "tokens"),
        ("/detokenize", {"tokens": "1 2 3"}, "tokens"),
        ("/detokenize", {"tokens": [1, "2"]}, "tokens[1]"),
        ("/detokenize", {"tokens": [1.5]}, "tokens[0]"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    server: RunningServer, route: str, body: dict[str, object], field: str
) -> None:
    reply = server.client.post(route, json=body)
    assert reply.status_code == 400, reply.text
    assert list(reply.json()) == ["detail"]
    assert field in reply.json()["detail"]


def test_an_unknown_model_is_a_404(server: RunningServer) -> None:
    for route, body in (("/tokenize", {"content": "hi"}), ("/detokenize", {"tokens": [1]})):
        reply = server.client.post(route, json={**body, "model": "no-such-model"})
        assert reply.status_code == 404
        assert "no-such-model" in reply.json()["detail"]


def test_naming_the_default_model_is_the_same_as_naming_none(server: RunningServer) -> None:
    text = TEXTS["cjk"]
    assert tokenize(server, text, model=DEFAULT_ID) == tokenize(server, text)


def test_requests_are_counted_by_route(server: RunningServer) -> None:
    def counted(route: str) -> float:
        text = server.client.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == "locallab_http_requests_total"
                    and labels.get("route") == route
                    and labels.get("status") == "200"
                ):
                    return sample.value
        return 0.0

    before = (counted("/tokenize"), counted("/detokenize"))
    detokenize(server, tokenize(server, "count me"))
    assert (counted("/tokenize"), counted("/detokenize")) == (before[0] + 1, before[1] + 1)


def test_the_schema_states_the_bodies_constraints(server: RunningServer) -> None:
    document = server.client.get("/schema/openapi.json").json()
    schemas = document["components"]["schemas"]
    token = schemas["DetokenizeRequest"]["properties"]["tokens"]["items"]
    assert (token["type"], token["minimum"], token["maximum"]) == ("integer", 0, 2**31 - 1)
    assert schemas["DetokenizeRequest"]["required"] == ["tokens"]
    tokenize_body = schemas["TokenizeRequest"]
    assert tokenize_body["required"] == ["content"]
    assert {"model", "content", "add_special", "parse_special", "with_pieces"} <= set(
        tokenize_body["properties"]
    )


def test_the_thread_engine_tokenizes_as_the_worker_does(
    make_server: ServerFactory, server: RunningServer, bare: Llama
) -> None:
    threaded = make_server(msgspec.structs.replace(TEST_SETTINGS, engine_isolation="thread"))
    for text in TEXTS.values():
        assert tokenize(threaded, text, with_pieces=True) == tokenize(
            server, text, with_pieces=True
        )
        assert detokenize(threaded, tokenize(threaded, text)) == text
    reply = threaded.client.post("/detokenize", json={"tokens": [bare.n_vocab()]})
    assert reply.status_code == 400 and "tokens[0]" in reply.json()["detail"]


def test_a_named_model_is_loaded_and_its_own_tokenizer_answers_with_its_bos(
    make_server: ServerFactory,
    tmp_path: Path,
    bare: Llama,
) -> None:
    gemma_path = assembled_gemma()
    files = ModelFiles(
        str(hub_cache_with(tmp_path / "hub", {(GEMMA_REPO, GEMMA_FILE): gemma_path}))
    )
    server = make_server(registry_=two_model_registry(DEFAULT_ID, SMOLLM2_SHA), files=files)
    text = TEXTS["emoji"]
    gemma = open_vocabulary(gemma_path)
    try:
        bos = gemma.token_bos()
        assert llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(gemma.model))
        with_bos = tokenize(server, text, model=GEMMA_ID, add_special=True)
        assert with_bos == gemma.tokenize(text.encode(), add_bos=True, special=True)
        assert with_bos[0] == bos
        without = tokenize(server, text, model=GEMMA_ID)
        assert without == gemma.tokenize(text.encode(), add_bos=False, special=True)
        assert bos not in without
    finally:
        gemma.close()
    # Another vocabulary: the default model splits the same text otherwise.
    assert tokenize(server, text) == bare.tokenize(text.encode(), add_bos=False, special=True)
    assert tokenize(server, text) != without
    assert detokenize(server, without, model=GEMMA_ID) == text
    loaded = {model["id"] for model in server.client.get("/models/loaded").json()["models"]}
    assert GEMMA_ID in loaded


def test_a_call_the_worker_dies_during_fails_asking_to_retry_and_the_next_is_answered(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    model = server.services.manager.current
    assert model is not None and isinstance(model.engine, WorkerEngine)
    pid = model.engine.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the worker takes the call but never answers it
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(server.client.post, "/tokenize", json={"content": "hi"})
            # The request holds the model from just before its call is sent.
            wait_until(lambda: model.in_flight == 1)
            os.kill(pid, signal.SIGKILL)
            reply = pending.result(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # never leave it stopped
            os.kill(pid, signal.SIGKILL)
    assert reply.status_code == 500
    assert "SIGKILL" in reply.json()["detail"] and "retry" in reply.json()["detail"]
    server.wait_for_model("loaded")
    assert detokenize(server, tokenize(server, "hi")) == "hi"
