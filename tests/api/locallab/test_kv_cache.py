"""A server with a quantized KV cache answers and says which cache it runs (/system/info,
/api/ps); with --ctx auto it loads the longest context its memory holds."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest

from locallab_gguf.models.registry import Registry
from locallab_gguf.placement.context import plan_load
from locallab_gguf.serving.loader import engine_config
from locallab_gguf.settings import Settings
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.nvml_standin import MIB, NvmlStandIn, simulated_probe

Q8_SETTINGS = msgspec.structs.replace(TEST_SETTINGS, cache_type_k="q8_0", cache_type_v="q8_0")
QUESTION = {"role": "user", "content": "What is the capital of France? Answer in one sentence."}


def test_q8_0_k_and_v_answer_greedily_with_flash_attention_turned_on(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="locallab_gguf.serving.loader"):
        server = make_server(Q8_SETTINGS)
    body = {"model": DEFAULT_ID, "messages": [QUESTION], "temperature": 0, "max_tokens": 24}
    reply = server.client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    first = reply.json()
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert 1 <= first["usage"]["completion_tokens"] <= 24

    offload = server.client.get("/system/info").json()["offload"]
    assert (offload["cache_type_k"], offload["cache_type_v"]) == ("q8_0", "q8_0")
    assert offload["flash_attn"] == "on"
    assert offload["flash_attn_reason"] == "on: the q8_0 V cache needs it"
    # 4 slots x 1,024 tokens x 30 blocks x 2 rows of 192 values in 34-byte blocks of 32.
    assert offload["kv_cache_bytes"] == 4 * 1024 * 30 * 2 * 6 * 34
    (running,) = server.client.get("/api/ps").json()["models"]
    assert (running["cache_type_k"], running["cache_type_v"]) == ("q8_0", "q8_0")
    load_lines = [record.getMessage() for record in caplog.records]
    assert any(
        "KV cache q8_0 K, q8_0 V" in line
        and "flash attention on: a quantized V cache needs it" in line
        for line in load_lines
    ), load_lines


def test_an_f16_cache_leaves_flash_attention_to_the_setting(make_server: ServerFactory) -> None:
    offload = make_server().client.get("/system/info").json()["offload"]
    assert (offload["cache_type_k"], offload["cache_type_v"]) == ("f16", "f16")
    assert (offload["flash_attn"], offload["flash_attn_reason"]) == ("auto", None)


def test_ctx_auto_loads_the_largest_context_the_memory_holds(
    make_server: ServerFactory,
    registry: Registry,
    model_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = msgspec.structs.replace(TEST_SETTINGS, ctx="auto", ctx_floor=512, cache_ram=0)
    config = engine_config(settings, registry.get(DEFAULT_ID))
    wanted = 2048
    at_wanted = plan_load(
        model_path,
        simulated_probe(NvmlStandIn([]), offload_supported=False).read(),
        msgspec.structs.replace(config, n_ctx=wanted),
        setting=None,
        registry="auto",
    )
    # Room for 2,048 tokens per slot and a little more, not for the next 256.
    available = at_wanted.ram_needed_bytes + MIB
    probe = simulated_probe(NvmlStandIn([]), offload_supported=False, available_ram=available)
    with caplog.at_level(logging.INFO, logger="locallab_gguf.serving.loader"):
        server = make_server(settings, hardware=probe)
    current = server.client.get("/models/current").json()
    assert current["context_length"] == wanted
    assert server.client.get("/system/info").json()["offload"]["context_per_slot"] == wanted
    logged = "context 2,048 tokens per slot x 4 slots (auto: the most memory holds"
    assert any(logged in record.getMessage() for record in caplog.records)


def test_settings_default_to_an_auto_context_with_a_floor() -> None:
    assert (Settings().ctx, Settings().ctx_floor, Settings().fixed_ctx) == ("auto", 4096, None)
    assert Settings(ctx=1024).fixed_ctx == 1024
