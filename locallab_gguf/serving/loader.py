"""How a model becomes a running engine: its engine config, its offload plan, then the load."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import msgspec

from locallab_gguf.engine.client import EngineClient
from locallab_gguf.engine.types import EmbeddingMode, EngineConfig, FlashAttention, KvLayout
from locallab_gguf.engine.worker.launch import open_engine
from locallab_gguf.models.aliases import parse_alias_flags
from locallab_gguf.models.registry import ModelSpec, Registry, load_registry_file
from locallab_gguf.placement.hardware import (
    HardwareInfo,
    HardwareProbe,
    choose_threads,
)
from locallab_gguf.placement.offload import (
    OffloadPlan,
    gpu_layers_fitting,
    gpu_layers_request,
    plan_model_file,
)
from locallab_gguf.serving.model_manager import EngineOpener, ResidencyPolicy
from locallab_gguf.serving.prompt_cache_budget import PromptCacheBudget, prompt_cache_bytes
from locallab_gguf.settings import Settings
from locallab_gguf.sizes import human_bytes

log = logging.getLogger(__name__)


def load_settings_registry(settings: Settings) -> Registry:
    registry = load_registry_file(settings.models_file)
    if settings.aliases:
        registry = registry.with_aliases(parse_alias_flags(settings.aliases))
    return registry


def residency_policy(settings: Settings) -> ResidencyPolicy:
    return ResidencyPolicy(
        max_models=settings.max_models,
        keep_alive=settings.keep_alive_seconds,
        autoload=settings.autoload,
        room_wait=settings.room_wait,
    )


def engine_config(
    settings: Settings, spec: ModelSpec, cache: PromptCacheBudget | None = None
) -> EngineConfig:
    """The model's own context and slots (models.toml), else the server's. With `cache`, the
    model's prompt cache draws on the server's one budget; without, it has --cache-ram alone
    (an engine opened outside a server)."""
    threads = choose_threads(settings.threads, settings.threads_batch)
    return EngineConfig(
        n_ctx=spec.context_length or settings.ctx,
        n_parallel=spec.parallel or settings.parallel,
        n_threads=threads.generation,
        n_threads_batch=threads.batch,
        queue_size=settings.queue_size,
        chat_template=spec.chat_template,
        deterministic=settings.deterministic,
        kv_layout=KvLayout(settings.kv_layout),
        flash_attn=FlashAttention(settings.flash_attn),
        prompt_cache_bytes=(
            cache.budget_bytes if cache is not None else prompt_cache_bytes(settings.cache_ram)
        ),
        prompt_cache_dir=settings.prompt_cache_dir,
        prompt_cache_ledger=(
            str(cache.ledger_path) if cache is not None and cache.ledger_path else None
        ),
        embedding=embedding_mode(spec),
        speculative=settings.speculative == "auto",
        draft_max=settings.draft_max,
    )


def embedding_mode(spec: ModelSpec) -> EmbeddingMode | None:
    """Embedding and reranker models run in llama.cpp's embeddings mode; chat models do not."""
    if spec.kind == "chat":
        return None
    return EmbeddingMode(kind=spec.kind, pooling=spec.pooling)


def offload_plan(
    settings: Settings, spec: ModelSpec, path: Path, hardware: HardwareInfo
) -> OffloadPlan:
    """GPU layers for `spec` on this hardware: --gpu-layers, else the registry's, else auto."""
    return plan_model_file(
        path,
        hardware,
        engine_config(settings, spec),
        setting=settings.gpu_layers,
        registry=spec.n_gpu_layers,
    )


def machine_probe() -> HardwareProbe:
    """This machine's GPUs and memory, as llama.cpp's build can use them."""
    from locallab_gguf.engine.runtime.llama import supports_gpu_offload

    return HardwareProbe(supports_gpu_offload())


class LocalPlanner:
    """The manager's look at memory before a load: the offload plan on this hardware.

    `probe` reads GPUs and memory (default: this machine's); tests simulate readings.
    """

    def __init__(
        self,
        settings: Settings,
        probe: HardwareProbe | None = None,
        cache: PromptCacheBudget | None = None,
    ) -> None:
        self._settings = settings
        self._probe = probe or machine_probe()
        self._cache = cache

    def plan(self, spec: ModelSpec, path: Path) -> OffloadPlan:
        planned = offload_plan(self._settings, spec, path, self._probe.read())
        if self._cache is None:
            return planned
        # The prompt caches may still grow to the budget: that memory is promised already, and
        # the models' estimates share the machine's RAM less the whole budget.
        return msgspec.structs.replace(
            planned,
            ram_promised_bytes=self._cache.room_left(),
            ram_total_bytes=(
                max(0, planned.ram_total_bytes - self._cache.budget_bytes)
                if planned.ram_total_bytes
                else 0
            ),
        )

    def gpu_layers_after(self, spec: ModelSpec, path: Path) -> Callable[[int], int] | None:
        """How many of the model's layers would fit the GPUs, as a function of the VRAM that
        unloading resident models would free; None where layers cannot go to a GPU (a CPU or
        Metal build: Metal's memory is the RAM the plan already judges)."""
        hardware = self._probe.read()
        if hardware.backend != "cuda":
            return None
        wanted, _ = gpu_layers_request(self._settings.gpu_layers, spec.n_gpu_layers)
        config = engine_config(self._settings, spec, self._cache)
        return functools.partial(gpu_layers_fitting, path, hardware, config, wanted)


def local_engine_opener(
    settings: Settings,
    probe: HardwareProbe | None = None,
    cache: PromptCacheBudget | None = None,
) -> EngineOpener:
    """Plan the offload on the hardware as it is now (models unloaded to make room have freed
    theirs), then load. Whether the model fits at all is the manager's to judge first.

    `probe` reads GPUs and memory (default: this machine's); tests simulate readings.
    """
    hardware_probe = probe or machine_probe()

    async def open_planned(spec: ModelSpec, path: Path) -> EngineClient:
        def plan() -> OffloadPlan:
            return offload_plan(settings, spec, path, hardware_probe.read())

        planned = await asyncio.to_thread(plan)
        log_offload_plan(spec.id, planned)
        config = engine_config(settings, spec, cache)
        return await open_engine(
            path,
            config,
            planned.estimate.gpu_layers,
            settings.engine_isolation,
            settings.log_level,
            settings.log_format,
        )

    return open_planned


def log_offload_plan(model_id: str, plan: OffloadPlan) -> None:
    estimate = plan.estimate
    log.info(
        "model %s: %d of %d layers on the GPU (%s: %s); estimated VRAM %s, RAM %s",
        model_id,
        estimate.gpu_layers,
        estimate.total_layers,
        estimate.decided_by,
        plan.reason,
        human_bytes(estimate.vram_bytes),
        human_bytes(estimate.ram_bytes),
    )
    if plan.warning:
        log.warning("model %s: %s", model_id, plan.warning)
