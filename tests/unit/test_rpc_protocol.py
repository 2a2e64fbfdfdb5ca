"""The ggml-rpc handshake spoken from Python, against scripted workers: the versions it accepts,
the errors that name the worker, and the constants it shares with the installed llama.cpp."""

from __future__ import annotations

import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from locallab_gguf.engine.rpc.protocol import (
    DEFAULT_PORT,
    PROTOCOL_VERSION,
    Endpoint,
    parse_endpoint,
    parse_endpoints,
    probe,
    wait_for,
)
from locallab_gguf.errors import ConfigError, RpcProtocolMismatch, RpcWorkerUnavailable
from tests.support.rpc_workers import MIB, ScriptedWorker
from tests.support.servers import free_port


@pytest.fixture
def worker() -> Iterator[ScriptedWorker]:
    scripted = ScriptedWorker(devices=((300 * MIB, 1024 * MIB), (7 * MIB, 8 * MIB)))
    yield scripted
    scripted.close()


def test_a_worker_s_devices_and_free_memory_are_read(worker: ScriptedWorker) -> None:
    facts = probe(worker.endpoint)
    assert facts.version == PROTOCOL_VERSION
    assert [(d.free_bytes, d.total_bytes) for d in facts.devices] == [
        (300 * MIB, 1024 * MIB),
        (7 * MIB, 8 * MIB),
    ]
    assert facts.free_bytes == 307 * MIB
    # The handshake first (llama.cpp's server refuses anything else), then count, memory.
    assert worker.commands == [14, 15, 11, 11]


@pytest.mark.parametrize("version", [(6, 0, 0), (8, 0, 0), (7, 1, 0)])
def test_a_worker_of_another_protocol_version_is_refused_naming_both(
    version: tuple[int, int, int],
) -> None:
    scripted = ScriptedWorker(version=version)
    try:
        with pytest.raises(RpcProtocolMismatch) as refused:
            probe(scripted.endpoint)
    finally:
        scripted.close()
    message = str(refused.value)
    assert str(scripted.endpoint) in message
    assert ".".join(map(str, version)) in message
    assert ".".join(map(str, PROTOCOL_VERSION)) in message


def test_a_newer_patch_version_is_compatible() -> None:
    scripted = ScriptedWorker(version=(PROTOCOL_VERSION[0], PROTOCOL_VERSION[1], 9))
    try:
        assert probe(scripted.endpoint).version[2] == 9
    finally:
        scripted.close()


def test_an_unreachable_worker_is_named_at_once() -> None:
    endpoint = Endpoint("127.0.0.1", free_port())
    with pytest.raises(RpcWorkerUnavailable, match=re.escape(str(endpoint))) as refused:
        probe(endpoint)
    assert "rpc-worker" in str(refused.value)


def test_a_worker_that_does_not_answer_is_reported_busy_within_the_timeout() -> None:
    scripted = ScriptedWorker(silent=True)
    try:
        with pytest.raises(RpcWorkerUnavailable, match="one client at a time"):
            probe(scripted.endpoint, timeout_s=0.5)
    finally:
        scripted.close()


def test_waiting_for_a_worker_gives_up_after_the_wait_and_says_so() -> None:
    endpoint = Endpoint("127.0.0.1", free_port())
    with pytest.raises(RpcWorkerUnavailable, match=r"waited 1 s"):
        wait_for(endpoint, wait_s=1.0)


def test_waiting_finds_a_worker_that_comes_back() -> None:
    port = free_port()
    started: list[ScriptedWorker] = []

    def start_later() -> None:
        threading.Event().wait(0.7)
        scripted = ScriptedWorker()
        scripted.listener.close()
        scripted.listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=scripted._serve, daemon=True).start()
        started.append(scripted)

    threading.Thread(target=start_later, daemon=True).start()
    facts = wait_for(Endpoint("127.0.0.1", port), wait_s=10.0)
    assert facts.endpoint == f"127.0.0.1:{port}"
    started[0].close()


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("10.0.0.2:50052", Endpoint("10.0.0.2", 50052)),
        ("worker-1", Endpoint("worker-1", DEFAULT_PORT)),
        ("[fd00::2]:6000", Endpoint("fd00::2", 6000)),
        (" gpu-box:7000 ", Endpoint("gpu-box", 7000)),
    ],
)
def test_endpoints_are_parsed(text: str, endpoint: Endpoint) -> None:
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["host:", ":5000", "host:port", "host:70000", "[fd00::2"])
def test_a_bad_endpoint_is_a_config_error_naming_it(text: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(text.strip()))):
        parse_endpoint(text)


def test_endpoint_lists_keep_order_and_drop_repeats() -> None:
    assert parse_endpoints(["a:1,b:2", "a:1", "c:3"]) == [
        Endpoint("a", 1),
        Endpoint("b", 2),
        Endpoint("c", 3),
    ]


def test_the_protocol_version_is_the_installed_llama_cpp_s() -> None:
    header = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = list(header.glob("site-packages/include/ggml-rpc.h"))
    assert found, "llama-cpp-python installs ggml-rpc.h beside its libraries"
    text = found[0].read_text()
    version = tuple(
        int(re.search(rf"RPC_PROTO_{part}_VERSION\s+(\d+)", text).group(1))  # type: ignore[union-attr]
        for part in ("MAJOR", "MINOR", "PATCH")
    )
    assert version == PROTOCOL_VERSION
