"""The offload plan's arithmetic on the real default model's GGUF, for simulated GPUs.

SmolLM2-135M: 30 blocks + the output layer = 31 offloadable layers; each block is 2.1 MiB
of Q4_1 weights and 768 bytes of f16 KV cache per token (3 KV heads x 64 x 2 x 2 bytes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pynvml
import pytest

from locallab_gguf.engine.encode.embedding import open_embedding_engine
from locallab_gguf.engine.types import EmbeddingMode, EngineConfig
from locallab_gguf.engine.worker.thread_runner import open_local_engine
from locallab_gguf.errors import ModelTooLarge
from locallab_gguf.models.registry import GpuLayers
from locallab_gguf.placement.gguf_file import GgufFormatError, read_gguf_header
from locallab_gguf.placement.hardware import HardwareInfo
from locallab_gguf.placement.memory import (
    KvCache,
    ModelMemory,
    kv_bytes_per_cell,
    model_memory,
    place,
)
from locallab_gguf.placement.offload import (
    RAM_RESERVE_BYTES,
    OffloadPlan,
    ensure_fits,
    gpu_layers_request,
    plan_model_file,
    plan_offload,
    read_model_memory,
    with_freed_vram,
)
from tests.support.llama_log import llama_cpp_lines, reported_mib
from tests.support.nvml_standin import (
    GIB,
    H100,
    MIB,
    NvmlStandIn,
    SimulatedGpu,
    gpu_with_free,
    simulated_probe,
)
from tests.support.tiny_encoders import write_tiny_bert

TOTAL_LAYERS = 31
SLOT_SHAPES = [(1024, 4), (4096, 8), (8192, 1)]


@pytest.fixture(scope="module")
def model(model_path: Path) -> ModelMemory:
    return model_memory(read_gguf_header(model_path))


def test_a_model_file_replaced_on_disk_is_read_again(
    model: ModelMemory, model_path: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "model.gguf"
    content = model_path.read_bytes()
    copy.write_bytes(content)
    assert read_model_memory(copy) == model
    # A pull that is cut short, or a file swapped for another, must not be answered from
    # what the old file said.
    copy.write_bytes(content[: read_gguf_header(model_path).data_offset + 1000])
    with pytest.raises(GgufFormatError, match="lies past the end of the file"):
        read_model_memory(copy)
    copy.unlink()
    copy.write_bytes(content)
    assert read_model_memory(copy) == model


def hardware_with(
    gpus: list[SimulatedGpu], *, offload_supported: bool = True, **kwargs: Any
) -> HardwareInfo:
    return simulated_probe(NvmlStandIn(gpus), offload_supported=offload_supported, **kwargs).read()


def plan(
    model: ModelMemory,
    hardware: HardwareInfo,
    ctx: int = 4096,
    parallel: int = 8,
    requested: GpuLayers = "auto",
) -> OffloadPlan:
    _, decided_by = gpu_layers_request(None if requested == "auto" else requested, "auto")
    return plan_offload(
        model,
        hardware,
        kv=KvCache(context_per_slot=ctx, parallel=parallel),
        requested=requested,
        decided_by=decided_by,
    )


def test_the_model_is_read_from_its_gguf(model: ModelMemory) -> None:
    assert (model.architecture, model.n_layer, model.offloadable_layers) == ("llama", 30, 31)
    assert (model.n_ctx_train, model.n_vocab, model.n_embd) == (8192, 49152, 576)
    assert set(model.kv_key_values) == set(model.kv_value_values) == {192}  # 3 heads x 64
    assert set(kv_bytes_per_cell(model, KvCache(context_per_slot=1, parallel=1))) == {768}
    assert set(model.layer_bytes) == {2_216_448}
    # The head is tied to the embeddings: only a GPU needs its own copy of them.
    assert model.tied_head_bytes == model.input_bytes == 30_081_024
    assert model.weights_bytes == 96_576_768  # every tensor in the file, none counted twice


@pytest.mark.parametrize(("ctx", "parallel"), SLOT_SHAPES)
def test_layers_grow_with_free_memory_and_never_exceed_it(
    model: ModelMemory, ctx: int, parallel: int
) -> None:
    previous = 0
    for free in range(0, 4 * GIB, 32 * MIB):
        chosen = plan(model, hardware_with([gpu_with_free(free)]), ctx, parallel)
        layers = chosen.estimate.gpu_layers
        assert layers >= previous, f"{free / MIB} MiB free: {layers} < {previous} layers"
        assert chosen.estimate.vram_bytes <= free
        assert chosen.vram_free_bytes == free
        previous = layers
    assert previous == TOTAL_LAYERS


def test_every_layer_goes_to_a_gpu_that_has_room(model: ModelMemory) -> None:
    chosen = plan(model, hardware_with([H100]))
    estimate = chosen.estimate
    assert (estimate.backend, estimate.gpu_layers, estimate.total_layers) == ("cuda", 31, 31)
    assert chosen.gpus == [0]
    assert chosen.reason == "all 31 layers fit GPU 0 (NVIDIA H100 80GB HBM3, 79.0 GiB free)"
    # Everything but the input embeddings and the logits handed to the sampler left RAM.
    assert estimate.ram_bytes < 40 * MIB
    placement = place(model, 31, KvCache(context_per_slot=4096, parallel=8))
    assert placement.gpu_kv_bytes == 720 * MIB  # llama.cpp reports 720.00 MiB for 8 x 4096


def test_a_small_gpu_takes_the_last_blocks_first(model: ModelMemory) -> None:
    chosen = plan(model, hardware_with([gpu_with_free(1000 * MIB)]))
    assert 0 < chosen.estimate.gpu_layers < TOTAL_LAYERS
    assert chosen.reason.startswith(f"{chosen.estimate.gpu_layers} of 31 layers fit GPU 0")
    assert chosen.reason.endswith("the rest run on the CPU")
    # What went to the GPU left RAM: the plan's RAM is below the CPU-only figure.
    cpu_only = plan(model, hardware_with([]))
    assert chosen.estimate.ram_bytes < cpu_only.estimate.ram_bytes


def test_more_slots_leave_room_for_fewer_layers(model: ModelMemory) -> None:
    gpu = [gpu_with_free(1200 * MIB)]
    one_slot = plan(model, hardware_with(gpu), ctx=4096, parallel=1).estimate.gpu_layers
    eight_slots = plan(model, hardware_with(gpu), ctx=4096, parallel=8).estimate.gpu_layers
    assert one_slot == TOTAL_LAYERS
    assert 0 < eight_slots < one_slot


def test_no_layer_without_a_gpu(model: ModelMemory) -> None:
    for hardware in (
        hardware_with([], offload_supported=False),
        simulated_probe(NvmlStandIn([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)).read(),
    ):
        chosen = plan(model, hardware)
        assert (chosen.estimate.gpu_layers, chosen.estimate.vram_bytes) == (0, 0)
        assert chosen.gpus == []
    assert plan(model, hardware_with([], offload_supported=False)).reason.startswith("no GPU")


def test_a_cpu_build_beside_a_gpu_offloads_nothing_and_says_how_to_fix_it(
    model: ModelMemory,
) -> None:
    chosen = plan(model, hardware_with([H100], offload_supported=False))
    assert chosen.estimate.gpu_layers == 0
    assert chosen.warning is not None and "make serve BACKEND=cuda" in chosen.warning
    explicit = plan(model, hardware_with([H100], offload_supported=False), requested=20)
    assert explicit.estimate.gpu_layers == 0
    assert explicit.warning is not None
    assert "asks for 20" in explicit.warning and "make serve BACKEND=cuda" in explicit.warning


def test_apple_silicon_offloads_every_layer_into_shared_memory(model: ModelMemory) -> None:
    chosen = plan(model, hardware_with([], metal=True))
    estimate = chosen.estimate
    assert (estimate.backend, estimate.gpu_layers) == ("metal", TOTAL_LAYERS)
    assert chosen.reason.startswith("Apple silicon")
    # Unified memory: what Metal holds is RAM too.
    assert estimate.ram_bytes > estimate.vram_bytes > 720 * MIB


@pytest.mark.parametrize(
    ("setting", "registry", "expected"),
    [
        (None, "auto", ("auto", "auto")),
        (None, 12, (12, "registry")),
        (20, 12, (20, "setting")),
        ("auto", 12, ("auto", "setting")),
        (-1, "auto", (-1, "setting")),
    ],
)
def test_the_flag_beats_the_registry_which_beats_auto(
    setting: GpuLayers | None, registry: GpuLayers, expected: tuple[GpuLayers, str]
) -> None:
    assert gpu_layers_request(setting, registry) == expected


def test_an_explicit_layer_count_is_used_as_given(model: ModelMemory) -> None:
    hardware = hardware_with([H100])
    assert plan(model, hardware, requested=12).estimate.gpu_layers == 12
    assert plan(model, hardware, requested=-1).estimate.gpu_layers == TOTAL_LAYERS
    assert plan(model, hardware, requested=999).estimate.gpu_layers == TOTAL_LAYERS
    too_many = plan(model, hardware_with([gpu_with_free(700 * MIB)]), requested=31)
    assert too_many.estimate.gpu_layers == 31
    assert too_many.warning is not None and "loading may fail" in too_many.warning


def test_several_gpus_share_the_layers_in_proportion_to_their_free_memory(
    model: ModelMemory,
) -> None:
    one = plan(model, hardware_with([gpu_with_free(1000 * MIB)])).estimate.gpu_layers
    two = plan(model, hardware_with([gpu_with_free(1000 * MIB)] * 2))
    assert two.gpus == [0, 1]
    assert two.estimate.gpu_layers > one
    assert two.estimate.vram_bytes <= 2 * 1000 * MIB
    assert two.reason.startswith(f"{two.estimate.gpu_layers} of 31 layers fit GPU 0")
    assert " + GPU 1 " in two.reason


def test_a_small_gpu_beside_a_big_one_is_named_with_the_way_around_it(
    model: ModelMemory,
) -> None:
    chosen = plan(model, hardware_with([gpu_with_free(600 * MIB), gpu_with_free(4 * GIB)]))
    # Each GPU in a split pays for its own CUDA runtime: the small one cannot.
    assert chosen.estimate.gpu_layers == 0
    assert "GPU 1 alone would take 31" in chosen.reason
    assert "CUDA_VISIBLE_DEVICES=GPU-00000001" in chosen.reason


def test_gpus_hidden_from_cuda_are_not_planned_for(model: ModelMemory) -> None:
    hardware = hardware_with([H100, H100], environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert plan(model, hardware).gpus == [1]


def test_a_model_larger_than_the_free_ram_is_refused_with_the_sizes(model: ModelMemory) -> None:
    chosen = plan(model, hardware_with([], available_ram=300 * MIB))
    assert not chosen.fits
    with pytest.raises(ModelTooLarge) as refused:
        ensure_fits("smollm2-135m-instruct", chosen)
    message = str(refused.value)
    assert "model 'smollm2-135m-instruct' needs about 917.1 MiB of RAM" in message
    assert "92.1 MiB of weights, 720.0 MiB of KV cache for 8 slots x 4,096 tokens" in message
    assert "only 300.0 MiB is available" in message
    assert "--ctx" in message and "--parallel" in message
    assert refused.value.available_bytes == 300 * MIB
    assert refused.value.needed_bytes == chosen.estimate.ram_bytes + RAM_RESERVE_BYTES


def test_what_fits_the_gpu_does_not_count_against_ram(model: ModelMemory) -> None:
    ram = 400 * MIB
    assert not plan(model, hardware_with([], available_ram=ram)).fits
    offloaded = plan(model, hardware_with([H100], available_ram=ram))
    assert offloaded.fits
    ensure_fits("smollm2-135m-instruct", offloaded)


def test_the_plan_reads_only_the_header(model_path: Path, tmp_path: Path) -> None:
    # A sparse copy holding only the header plans exactly like the real file.
    header = read_gguf_header(model_path)
    sparse = tmp_path / "header-only.gguf"
    with model_path.open("rb") as source, sparse.open("wb") as copy:
        copy.write(source.read(header.data_offset))
        copy.truncate(header.file_size)
    hardware = hardware_with([gpu_with_free(1000 * MIB)])
    config = EngineConfig(n_parallel=8, n_threads=2, n_threads_batch=2)
    real = plan_model_file(model_path, hardware, config, setting=None, registry="auto")
    assert plan_model_file(sparse, hardware, config, setting=None, registry="auto") == real
    assert real.estimate.context_per_slot == 4096  # the trained 8192, capped


def test_the_estimate_matches_what_llama_cpp_allocates(
    model: ModelMemory, model_path: Path
) -> None:
    """Load the real model on the CPU and read llama.cpp's own report of its buffers."""

    async def load_and_close() -> None:
        config = EngineConfig(n_ctx=1024, n_parallel=4, n_threads=2, n_threads_batch=2)
        engine = await open_local_engine(model_path, config, 0)
        await engine.close(drain=False)

    lines = llama_cpp_lines(lambda: asyncio.run(load_and_close()))
    estimate = place(model, 0, KvCache(context_per_slot=1024, parallel=4))
    assert estimate.ram_kv_bytes == reported_mib(lines, "CPU KV buffer size") * MIB
    weights_mib = reported_mib(lines, "CPU_Mapped model buffer size")
    assert estimate.ram_weights_bytes / MIB == pytest.approx(weights_mib, abs=0.01)
    compute_mib = reported_mib(lines, "CPU compute buffer size")
    output_mib = reported_mib(lines, "CPU  output buffer size")
    # The compute estimate errs high, by little.
    reported = (compute_mib + output_mib) * MIB
    assert reported <= estimate.ram_compute_bytes <= 1.1 * reported


def test_an_encoders_kv_estimate_is_its_one_context_or_none(
    model_path: Path, tmp_path: Path
) -> None:
    """Embedding models run their inputs in one context (a causal model's KV is one batch
    long, whatever --parallel says); a BERT keeps no KV cache. The plan says what llama.cpp
    then allocates, not a chat model's slots."""
    hardware = hardware_with([])
    config = EngineConfig(
        n_ctx=1024, n_parallel=4, n_threads=2, n_threads_batch=2, embedding=EmbeddingMode()
    )
    as_chat = plan_model_file(
        model_path,
        hardware,
        msgspec.structs.replace(config, embedding=None),
        setting=None,
        registry=0,
    )
    planned = plan_model_file(model_path, hardware, config, setting=None, registry=0)

    def load() -> None:
        mean = msgspec.structs.replace(config, embedding=EmbeddingMode(pooling="mean"))
        open_embedding_engine(model_path, 0, mean, mean.embedding).close(drain=False)

    reported = reported_mib(llama_cpp_lines(load), "CPU KV buffer size") * MIB
    assert planned.estimate.kv_cache_bytes == reported
    assert as_chat.estimate.kv_cache_bytes == 4 * reported  # 4 slots of 1,024 tokens

    bert = write_tiny_bert(tmp_path / "tiny-bert.gguf")
    plan = plan_model_file(bert, hardware, config, setting=None, registry=0)
    lines = llama_cpp_lines(
        lambda: open_embedding_engine(bert, 0, config, EmbeddingMode()).close(drain=False)
    )
    assert plan.estimate.kv_cache_bytes == 0
    assert not [line for line in lines if "KV buffer size" in line]


def test_vram_freed_by_unloading_is_credited_to_the_gpus_in_use_within_their_size() -> None:
    gpus = hardware_with(
        [SimulatedGpu("a", 24 * GIB, 4 * GIB), SimulatedGpu("b", 24 * GIB, 14 * GIB)]
    )
    a, b = with_freed_vram(gpus.offload_gpus, 15 * GIB)
    # 20 GiB and 10 GiB in use: two thirds of what is freed was on the first GPU.
    assert (a.free_memory_bytes, b.free_memory_bytes) == (14 * GIB, 19 * GIB)
    a, b = with_freed_vram(gpus.offload_gpus, 60 * GIB)
    assert (a.free_memory_bytes, b.free_memory_bytes) == (24 * GIB, 24 * GIB)
    assert with_freed_vram(gpus.offload_gpus, 0) == gpus.offload_gpus
