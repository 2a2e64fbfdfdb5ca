"""How many layers go to the GPU, and whether the model fits this machine at all.

`auto` offloads as many layers as fit the free memory of the NVIDIA GPUs, every layer on
Apple silicon (Metal shares the RAM), and none on a CPU build or without a GPU. A number in
the registry, or `--gpu-layers` / `LOCALLAB_GPU_LAYERS`, is used as given.

With several GPUs llama.cpp spreads the offloaded layers over all of them in proportion to
their free memory, and each one keeps its own compute buffer; the plan checks every GPU's
share. A model whose part in RAM exceeds the available memory is refused before llama.cpp
allocates anything: the kernel would otherwise kill the whole server.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import msgspec

from locallab_gguf.engine.types import EngineConfig, KvCacheType, RpcLayers
from locallab_gguf.errors import ModelTooLarge
from locallab_gguf.models.registry import GpuLayers
from locallab_gguf.models.splits import local_parts
from locallab_gguf.placement.gguf_parts import read_model_header
from locallab_gguf.placement.hardware import Backend, HardwareInfo
from locallab_gguf.placement.memory import KvCache, ModelMemory, Placement, model_memory, place
from locallab_gguf.placement.nvidia import GpuInfo
from locallab_gguf.sizes import human_bytes

DecidedBy = Literal["auto", "setting", "registry"]

MIB = 1024 * 1024
# What each GPU needs besides our tensors: the CUDA context, cuBLAS workspaces, and the
# allocator's slack. Counted in the VRAM estimate.
GPU_RUNTIME_BYTES = 512 * MIB
# Kept free on each GPU for what the estimate cannot see (other processes growing, drivers).
GPU_SAFETY_FRACTION = 0.05
# RAM kept for the server itself and the operating system when judging whether a model fits.
RAM_RESERVE_BYTES = 256 * MIB


class OffloadEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """Where a model's memory goes with a given number of GPU layers."""

    backend: Backend
    gpu_layers: int
    total_layers: int  # the blocks plus the output layer, as llama.cpp counts them
    decided_by: DecidedBy
    context_per_slot: int
    parallel: int
    weights_bytes: int
    kv_cache_bytes: int
    vram_bytes: int  # on the GPU(s), CUDA runtime included; on Metal this is RAM too
    ram_bytes: int  # in RAM; on Metal, everything
    cache_type_k: KvCacheType = KvCacheType.F16
    cache_type_v: KvCacheType = KvCacheType.F16

    @property
    def kv(self) -> KvCache:
        """The KV cache this estimate counts."""
        return KvCache(
            context_per_slot=self.context_per_slot,
            parallel=self.parallel,
            type_k=self.cache_type_k,
            type_v=self.cache_type_v,
        )


class OffloadPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The estimate for the chosen layers, the memory it was judged against, and why."""

    estimate: OffloadEstimate
    requested: GpuLayers
    gpus: list[int]  # NVML indices of the GPUs the layers are spread over
    vram_free_bytes: int
    ram_available_bytes: int
    reason: str
    warning: str | None = None
    ram_total_bytes: int = 0  # the machine's RAM: what resident models' estimates share
    # The part of the prompt caches' budget (--cache-ram) they do not hold yet: free now, but
    # promised to them, so no new model may count on it.
    ram_promised_bytes: int = 0
    # How the context per slot was chosen (--ctx auto: what memory held), for the load log.
    context_reason: str = ""
    # Layers on RPC workers (rpc_split.py), and why they are or are not used.
    rpc: RpcLayers | None = None
    rpc_reason: str = ""

    @property
    def rpc_layers(self) -> int:
        """The layers on RPC workers, counted in the estimate's gpu_layers."""
        return self.rpc.worker_layers if self.rpc is not None else 0

    @property
    def fits(self) -> bool:
        return self.ram_needed_bytes <= self.ram_available_bytes

    @property
    def ram_needed_bytes(self) -> int:
        """The model's RAM, the system's reserve and what the prompt caches may still take."""
        return self.estimate.ram_bytes + RAM_RESERVE_BYTES + self.ram_promised_bytes


def gpu_layers_request(
    setting: GpuLayers | None, registry: GpuLayers
) -> tuple[GpuLayers, DecidedBy]:
    """--gpu-layers / LOCALLAB_GPU_LAYERS, then the registry's number, then auto."""
    if setting is not None:
        return setting, "setting"
    if registry != "auto":
        return registry, "registry"
    return "auto", "auto"


def read_model_memory(path: Path) -> ModelMemory:
    """The model file's memory facts, read once per version of the file.

    Parsing the header walks every metadata entry (about 60 ms for the default model, more for
    large vocabularies); /system/info asks for it on every call while the file stays the same.
    """
    try:
        stats = [part.stat() for part in local_parts(path)]
    except OSError:
        return model_memory(read_model_header(path))  # which says what is wrong
    versions = tuple((stat.st_size, stat.st_mtime_ns, stat.st_ino) for stat in stats)
    return _read_model_memory(path, versions)


@functools.lru_cache(maxsize=8)
def _read_model_memory(path: Path, versions: tuple[tuple[int, int, int], ...]) -> ModelMemory:
    return model_memory(read_model_header(path))


def plan_model_file(
    path: Path,
    hardware: HardwareInfo,
    config: EngineConfig,
    *,
    setting: GpuLayers | None,
    registry: GpuLayers,
) -> OffloadPlan:
    """Read the GGUF header (not the weights) and plan its load with `config` on this hardware."""
    model = read_model_memory(path)
    requested, decided_by = gpu_layers_request(setting, registry)
    return plan_offload(
        model, hardware, kv=kv_cache_of(config, model), requested=requested, decided_by=decided_by
    )


def kv_cache_of(config: EngineConfig, model: ModelMemory) -> KvCache:
    """The KV cache `config` opens for `model` (an auto context at its floor). An encoder's
    context keeps llama.cpp's f16 cache: the cache types are the chat slots'."""
    context_per_slot, parallel = config.kv_shape(model.n_ctx_train)
    if config.embedding is not None:
        return KvCache(context_per_slot=context_per_slot, parallel=parallel)
    return KvCache(
        context_per_slot=context_per_slot,
        parallel=parallel,
        type_k=config.cache_type_k,
        type_v=config.cache_type_v,
    )


def plan_offload(
    model: ModelMemory,
    hardware: HardwareInfo,
    *,
    kv: KvCache,
    requested: GpuLayers,
    decided_by: DecidedBy,
) -> OffloadPlan:
    gpus = hardware.offload_gpus
    warning = None
    if requested == "auto":
        layers, reason = _auto_layers(model, hardware, gpus, kv)
    else:
        layers, reason, warning = _requested_layers(
            model, hardware, gpus, requested, decided_by, kv
        )
    if warning is None and hardware.advice:
        warning = hardware.advice  # a GPU sits idle: say so every time a model loads
    return OffloadPlan(
        estimate=_estimate(model, hardware.backend, layers, gpus, kv, decided_by),
        requested=requested,
        gpus=[gpu.index for gpu in gpus] if layers else [],
        vram_free_bytes=sum(gpu.free_memory_bytes for gpu in gpus),
        ram_available_bytes=hardware.memory.available_bytes,
        ram_total_bytes=hardware.memory.total_bytes,
        reason=reason,
        warning=warning,
    )


def estimate_loaded(
    path: Path,
    hardware: HardwareInfo,
    *,
    gpu_layers: int,
    kv: KvCache,
    decided_by: DecidedBy,
    rpc_layers: int = 0,
) -> OffloadEstimate:
    """The estimate for a model file already loaded with `gpu_layers` (-1: all), of which
    `rpc_layers` are on RPC workers: they take neither this machine's RAM nor its VRAM."""
    model = read_model_memory(path)
    gpus = hardware.offload_gpus
    layers = model.offloadable_layers if gpu_layers < 0 else gpu_layers
    if not rpc_layers:
        return _estimate(model, hardware.backend, layers, gpus, kv, decided_by)
    local = _estimate(model, hardware.backend, layers - rpc_layers, gpus, kv, decided_by)
    return msgspec.structs.replace(
        local, gpu_layers=layers, ram_bytes=place(model, layers, kv).ram_bytes
    )


def gpu_layers_fitting(
    path: Path,
    hardware: HardwareInfo,
    config: EngineConfig,
    wanted: GpuLayers,
    freed_vram_bytes: int,
) -> int:
    """How many of the layers `wanted` (auto: all) would fit the offload GPUs if
    `freed_vram_bytes` more were free there: what unloading resident models would give."""
    gpus = with_freed_vram(hardware.offload_gpus, freed_vram_bytes)
    if not gpus:
        return 0
    model = read_model_memory(path)
    total = model.offloadable_layers
    cap = total if wanted == "auto" or wanted < 0 else min(wanted, total)
    return min(cap, _most_layers(model, gpus, kv_cache_of(config, model)))


def with_freed_vram(gpus: list[GpuInfo], freed_bytes: int) -> list[GpuInfo]:
    """The GPUs as they would be with `freed_bytes` more free. Which GPU a model's layers sit
    on is not recorded, so the bytes are spread in proportion to each GPU's memory in use
    (exact with one GPU), never beyond a GPU's total."""
    used = [gpu.total_memory_bytes - gpu.free_memory_bytes for gpu in gpus]
    in_use = sum(used)
    if freed_bytes <= 0 or in_use <= 0:
        return gpus
    return [
        msgspec.structs.replace(
            gpu,
            free_memory_bytes=min(
                gpu.total_memory_bytes, gpu.free_memory_bytes + freed_bytes * share // in_use
            ),
        )
        for gpu, share in zip(gpus, used, strict=True)
    ]


def ensure_fits(model_id: str, plan: OffloadPlan, *, other_models_bytes: int = 0) -> None:
    """Refuse, with the sizes, a model whose part in RAM exceeds the available memory, even
    with `other_models_bytes` freed by unloading the other resident models."""
    estimate = plan.estimate
    if plan.ram_needed_bytes <= plan.ram_available_bytes + other_models_bytes:
        return
    on_gpu = (
        f" {estimate.gpu_layers} of {estimate.total_layers} layers go to the GPU "
        f"({human_bytes(estimate.vram_bytes)}); the rest needs RAM."
        if estimate.gpu_layers and estimate.backend == "cuda"
        else ""
    )
    others = (
        f" (and {human_bytes(other_models_bytes)} would be freed by unloading every other model)"
        if other_models_bytes
        else ""
    )
    weights, kv = human_bytes(estimate.weights_bytes), human_bytes(estimate.kv_cache_bytes)
    slots = f"{estimate.parallel} slots x {estimate.context_per_slot:,} tokens"
    if estimate.cache_type_k.quantized or estimate.cache_type_v.quantized:
        slots += f", {estimate.cache_type_k.value} K and {estimate.cache_type_v.value} V"
    promised = (
        f" and {human_bytes(plan.ram_promised_bytes)} the prompt cache may still take (--cache-ram)"
        if plan.ram_promised_bytes
        else ""
    )
    raise ModelTooLarge(
        f"model {model_id!r} needs about {human_bytes(estimate.ram_bytes)} of RAM ({weights} "
        f"of weights, {kv} of KV cache for {slots}, and compute buffers), but only "
        f"{human_bytes(plan.ram_available_bytes)} is available{others}, keeping "
        f"{human_bytes(RAM_RESERVE_BYTES)} for the system{promised}.{on_gpu} It was not "
        "loaded; the models that were serving still are. Free memory, start with a smaller "
        "--ctx (or --ctx-floor) or fewer --parallel slots, a quantized KV cache "
        "(--cache-type-k/-v q8_0), or a smaller model.",
        needed_bytes=plan.ram_needed_bytes,
        available_bytes=plan.ram_available_bytes + other_models_bytes,
    )


def _requested_layers(
    model: ModelMemory,
    hardware: HardwareInfo,
    gpus: list[GpuInfo],
    requested: int,
    decided_by: DecidedBy,
    kv: KvCache,
) -> tuple[int, str, str | None]:
    """A number from the settings or the registry: used as given, with a warning when this
    build cannot offload or the GPUs look too small for it."""
    total = model.offloadable_layers
    layers = total if requested < 0 else min(requested, total)
    source = "--gpu-layers" if decided_by == "setting" else "the registry's n_gpu_layers"
    reason = f"{source} asks for {requested} of {total} layers"
    if layers and not hardware.gpu_offload_supported:
        warning = (
            f"{reason}, but this llama.cpp build cannot offload, so every layer runs on "
            f"the CPU. {hardware.advice or ''}"
        ).strip()
        return 0, reason, warning
    if layers and gpus and not fits_gpus(model, layers, gpus, kv):
        needed = _vram(model, layers, gpus, kv)
        free = sum(gpu.free_memory_bytes for gpu in gpus)
        best = _most_layers(model, gpus, kv)
        return (
            layers,
            reason,
            (
                f"{reason}; they need about {human_bytes(needed)} but {human_bytes(free)} is "
                f"free, so loading may fail. `auto` would offload {best}."
            ),
        )
    return layers, reason, None


def _auto_layers(
    model: ModelMemory,
    hardware: HardwareInfo,
    gpus: list[GpuInfo],
    kv: KvCache,
) -> tuple[int, str]:
    total = model.offloadable_layers
    if hardware.backend == "metal":
        return total, f"Apple silicon: all {total} layers run on Metal, in the shared RAM"
    if hardware.backend == "cpu":
        if hardware.advice:
            return 0, "this llama.cpp build cannot offload to the GPU that is here"
        if hardware.gpu_offload_supported:
            return 0, (
                f"this llama.cpp build can offload, but no NVIDIA GPU is usable "
                f"({hardware.nvidia.detail}); set --gpu-layers to offload to another GPU"
            )
        return 0, f"no GPU: {hardware.nvidia.detail}"
    layers = _most_layers(model, gpus, kv)
    where = " + ".join(
        f"GPU {gpu.index} ({gpu.name}, {human_bytes(gpu.free_memory_bytes)} free)" for gpu in gpus
    )
    if layers == total:
        reason = f"all {total} layers fit {where}"
    elif layers == 0:
        one_layer = human_bytes(_vram(model, 1, gpus, kv))
        reason = (
            f"no layer fits {where}: the first one needs about {one_layer} with the CUDA "
            "runtime and compute buffers"
        )
    else:
        reason = f"{layers} of {total} layers fit {where}; the rest run on the CPU"
    return layers, reason + _one_gpu_hint(model, gpus, layers, kv)


def _one_gpu_hint(model: ModelMemory, gpus: list[GpuInfo], layers: int, kv: KvCache) -> str:
    """Every GPU in a split pays for its own runtime and buffers, so a small GPU beside a big
    one can lower the total: say when the big one alone would take more layers."""
    if len(gpus) < 2:
        return ""
    alone = {gpu.uuid: _most_layers(model, [gpu], kv) for gpu in gpus}
    best = max(gpus, key=lambda gpu: alone[gpu.uuid])
    if alone[best.uuid] <= layers:
        return ""
    return (
        f"; GPU {best.index} alone would take {alone[best.uuid]}: start the server with "
        f"CUDA_VISIBLE_DEVICES={best.uuid}"
    )


def _most_layers(model: ModelMemory, gpus: list[GpuInfo], kv: KvCache) -> int:
    # The estimate grows with each layer, so the layers that fit are a prefix: bisect.
    low, high = 0, model.offloadable_layers
    while low < high:
        middle = (low + high + 1) // 2
        if fits_gpus(model, middle, gpus, kv):
            low = middle
        else:
            high = middle - 1
    return low


def fits_gpus(model: ModelMemory, layers: int, gpus: list[GpuInfo], kv: KvCache) -> bool:
    if layers == 0:
        return True
    if not gpus:
        return False
    placement = place(model, layers, kv)
    free_total = sum(gpu.free_memory_bytes for gpu in gpus)
    if free_total <= 0:
        return False
    spread = placement.gpu_weights_bytes + placement.gpu_kv_bytes
    for gpu in gpus:
        share = spread * gpu.free_memory_bytes / free_total
        # A split by whole layers can hand a GPU one block more than its share.
        rounding = placement.largest_gpu_block_bytes if len(gpus) > 1 else 0
        needed = share + rounding + placement.gpu_compute_bytes + GPU_RUNTIME_BYTES
        if needed > gpu.free_memory_bytes * (1 - GPU_SAFETY_FRACTION):
            return False
    return True


def _vram(model: ModelMemory, layers: int, gpus: list[GpuInfo], kv: KvCache) -> int:
    placement = place(model, layers, kv)
    return _gpu_total(placement, max(len(gpus), 1))


def _gpu_total(placement: Placement, n_gpus: int) -> int:
    if placement.gpu_layers == 0:
        return 0
    per_gpu = placement.gpu_compute_bytes + GPU_RUNTIME_BYTES
    return placement.gpu_weights_bytes + placement.gpu_kv_bytes + per_gpu * n_gpus


def _estimate(
    model: ModelMemory,
    backend: Backend,
    layers: int,
    gpus: list[GpuInfo],
    kv: KvCache,
    decided_by: DecidedBy,
) -> OffloadEstimate:
    placement = place(model, layers, kv)
    if backend == "metal":
        # Unified memory: what is "on the GPU" is RAM as well, and there is no CUDA runtime.
        vram = placement.gpu_bytes
        ram = placement.ram_bytes + vram
    else:
        vram = _gpu_total(placement, max(len(gpus), 1))
        ram = placement.ram_bytes
    return OffloadEstimate(
        backend=backend,
        gpu_layers=placement.gpu_layers,
        total_layers=model.offloadable_layers,
        decided_by=decided_by,
        context_per_slot=kv.context_per_slot,
        parallel=kv.parallel,
        weights_bytes=model.weights_bytes,
        kv_cache_bytes=placement.kv_bytes,
        vram_bytes=vram,
        ram_bytes=ram,
        cache_type_k=kv.type_k,
        cache_type_v=kv.type_v,
    )
