"""KV cache types: the plan's bytes for each type are what llama.cpp allocates (read from its
own "KV buffer size" lines while the real models load), and a quantized V cache turns flash
attention on, or is refused where flash attention is turned off."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from locallab_gguf.engine.types import EngineConfig, FlashAttention, KvCacheType
from locallab_gguf.engine.worker.thread_runner import open_local_engine
from locallab_gguf.errors import ConfigError
from locallab_gguf.models.registry import parse_registry
from locallab_gguf.placement.memory import KvCache, place, row_bytes
from locallab_gguf.placement.offload import read_model_memory
from locallab_gguf.serving.loader import load_settings_registry
from locallab_gguf.setting_flags import load_settings
from locallab_gguf.settings import Settings
from tests.support.llama_log import llama_cpp_lines
from tests.support.two_models import assembled_gemma

F16, Q8, Q4 = KvCacheType.F16, KvCacheType.Q8_0, KvCacheType.Q4_0
MIB = 1024 * 1024


def _kv_buffer_bytes(lines: list[str]) -> int:
    """The sum of llama.cpp's "KV buffer size" lines (a model with sliding-window layers, as
    Gemma 3, has two caches), in bytes, to the 0.01 MiB llama.cpp prints."""
    sizes = [
        float(found.group(1))
        for line in lines
        if (found := re.search(r"KV buffer size\s*=\s*([\d.]+) MiB", line))
    ]
    assert sizes, "llama.cpp reported no KV buffer"
    return round(sum(sizes) * MIB)


def test_a_row_of_each_type_takes_ggml_s_bytes() -> None:
    assert (row_bytes(F16, 64), row_bytes(Q8, 64), row_bytes(Q4, 64)) == (128, 68, 36)


@pytest.mark.parametrize(
    ("which", "type_k", "type_v", "context", "parallel"),
    [
        ("smollm2", F16, F16, 1024, 4),
        ("smollm2", Q8, Q8, 1024, 4),
        ("smollm2", Q4, Q4, 768, 2),
        ("smollm2", Q8, F16, 512, 3),  # a quantized K alone needs no flash attention
        ("gemma", Q8, Q4, 1024, 2),
    ],
)
def test_the_planned_kv_bytes_of_each_type_are_what_llama_cpp_allocates(
    model_path: Path,
    which: str,
    type_k: KvCacheType,
    type_v: KvCacheType,
    context: int,
    parallel: int,
) -> None:
    path = model_path if which == "smollm2" else assembled_gemma()
    config = EngineConfig(
        n_ctx=context,
        n_parallel=parallel,
        n_threads=2,
        n_threads_batch=2,
        cache_type_k=type_k,
        cache_type_v=type_v,
    )
    infos = []

    async def load_and_close() -> None:
        engine = await open_local_engine(path, config, 0)
        infos.append(engine.info)
        await engine.close(drain=False)

    lines = llama_cpp_lines(lambda: asyncio.run(load_and_close()))
    kv = KvCache(context_per_slot=context, parallel=parallel, type_k=type_k, type_v=type_v)
    planned = place(read_model_memory(path), 0, kv).ram_kv_bytes
    # llama.cpp prints MiB with two decimals: equal to within its rounding.
    assert abs(planned - _kv_buffer_bytes(lines)) <= 0.006 * MIB * 2
    (info,) = infos
    assert (info.cache_type_k, info.cache_type_v) == (type_k, type_v)
    if type_v.quantized:
        assert info.flash_attn is FlashAttention.ON
        assert any(re.search(r"flash_attn\s*=\s*enabled", line) for line in lines)


def test_quantized_caches_take_the_fraction_of_f16_their_blocks_say(model_path: Path) -> None:
    model = read_model_memory(model_path)

    def kv_bytes(kind: KvCacheType) -> int:
        kv = KvCache(context_per_slot=4096, parallel=8, type_k=kind, type_v=kind)
        return place(model, 0, kv).ram_kv_bytes

    assert kv_bytes(F16) == 720 * MIB
    assert kv_bytes(Q8) * 64 == kv_bytes(F16) * 34  # 32 values: 34 bytes against 64
    assert kv_bytes(Q4) * 64 == kv_bytes(F16) * 18


def test_a_quantized_v_cache_without_flash_attention_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"LOCALLAB_FLASH_ATTN": "off"}, {"cache_type_v": "q4_0"})
    message = str(refused.value)
    assert "q4_0 V cache needs flash attention" in message
    assert "--flash-attn auto" in message and "--cache-type-v f16" in message
    # A quantized K alone, or the V with flash attention left to auto, is served.
    assert load_settings({}, {"cache_type_k": "q4_0", "flash_attn": "off"}).flash_attn == "off"
    assert load_settings({}, {"cache_type_v": "q4_0"}).cache_type_v == "q4_0"
    with pytest.raises(ValueError, match="needs flash attention"):
        EngineConfig(n_threads=1, n_threads_batch=1, cache_type_v=Q4, flash_attn=FlashAttention.OFF)


def test_a_model_whose_registry_entry_quantizes_v_is_refused_with_flash_attention_off(
    tmp_path: Path,
) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(
        'default = "small"\n\n[models.small]\nname = "Small"\nrepo = "owner/repo"\n'
        'file = "small.gguf"\ncache_type_k = "q8_0"\ncache_type_v = "q4_0"\n'
    )
    parsed = parse_registry(registry.read_text(), source=str(registry))
    assert (parsed.models["small"].cache_type_k, parsed.models["small"].cache_type_v) == (Q8, Q4)
    with pytest.raises(ConfigError, match=r'model .small. of .* sets cache_type_v = "q4_0"'):
        load_settings_registry(Settings(models_file=str(registry), flash_attn="off"))
    assert load_settings_registry(Settings(models_file=str(registry))).default == "small"
