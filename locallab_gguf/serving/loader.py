"""How a model becomes a running engine: its engine config, its offload plan, then the load."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import msgspec

from locallab_gguf.engine.client import EngineClient
from locallab_gguf.engine.rpc.protocol import Endpoint, parse_endpoints, probe
from locallab_gguf.engine.types import (
    EmbeddingMode,
    EngineConfig,
    FlashAttention,
    KvCacheType,
    KvLayout,
    quantized_v_needs_flash_attention,
)
from locallab_gguf.engine.worker.launch import open_engine
from locallab_gguf.errors import ConfigError, LocalLabError
from locallab_gguf.models.aliases import parse_alias_flags
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.models.registry import ModelSpec, Registry, load_registry_file
from locallab_gguf.placement.context import plan_load
from locallab_gguf.placement.hardware import (
    HardwareInfo,
    HardwareProbe,
    choose_threads,
)
from locallab_gguf.placement.hub_header import HubHeaders
from locallab_gguf.placement.memory import ModelMemory, model_memory
from locallab_gguf.placement.offload import (
    OffloadPlan,
    gpu_layers_fitting,
    gpu_layers_request,
    read_model_memory,
)
from locallab_gguf.placement.rpc_split import RpcUse, plan_rpc
from locallab_gguf.serving.model_manager import EngineOpener, ResidencyPolicy
from locallab_gguf.serving.prompt_cache_budget import PromptCacheBudget, prompt_cache_bytes
from locallab_gguf.settings import Settings
from locallab_gguf.sizes import human_bytes

log = logging.getLogger(__name__)


def load_settings_registry(settings: Settings) -> Registry:
    registry = load_registry_file(settings.models_file)
    if settings.aliases:
        registry = registry.with_aliases(parse_alias_flags(settings.aliases))
    check_rpc_settings(settings, registry)
    for spec in registry.models.values():
        # A model whose own V cache type the server's flash-attention setting cannot serve
        # fails at start-up, not at its first request.
        quantized_v = spec.cache_type_v is not None and spec.cache_type_v.quantized
        if settings.flash_attn == "off" and spec.kind == "chat" and quantized_v:
            assert spec.cache_type_v is not None
            raise ConfigError(
                f"model {spec.id!r} of {registry.source} sets cache_type_v = "
                f'"{spec.cache_type_v.value}": '
                + quantized_v_needs_flash_attention(spec.cache_type_v)
            )
    return registry


def check_rpc_settings(settings: Settings, registry: Registry) -> None:
    """RPC workers named in --rpc or models.toml are checked at start-up: their addresses,
    and the process isolation a lost worker needs (llama.cpp aborts the process that loses
    one; only a worker process is restarted)."""
    named = {"--rpc": list(settings.rpc)} | {
        f"model {spec.id!r} of {registry.source}": spec.rpc
        for spec in registry.models.values()
        if spec.rpc
    }
    for where, endpoints in named.items():
        try:
            parse_endpoints(endpoints)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if endpoints and settings.engine_isolation != "process":
            raise ConfigError(
                f"{where} names RPC workers, which need --engine-isolation process: llama.cpp "
                "aborts the process that loses a worker, and only a worker process is restarted"
            )


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
        n_ctx=spec.context_length or settings.fixed_ctx,
        ctx_floor=settings.ctx_floor,
        n_parallel=spec.parallel or settings.parallel,
        n_threads=threads.generation,
        n_threads_batch=threads.batch,
        queue_size=settings.queue_size,
        chat_template=spec.chat_template,
        deterministic=settings.deterministic,
        kv_layout=KvLayout(settings.kv_layout),
        flash_attn=FlashAttention(settings.flash_attn),
        cache_type_k=spec.cache_type_k or KvCacheType(settings.cache_type_k),
        cache_type_v=spec.cache_type_v or KvCacheType(settings.cache_type_v),
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
        draft_cost=settings.draft_cost,
    )


def embedding_mode(spec: ModelSpec) -> EmbeddingMode | None:
    """Embedding and reranker models run in llama.cpp's embeddings mode; chat models do not."""
    if spec.kind == "chat":
        return None
    return EmbeddingMode(kind=spec.kind, pooling=spec.pooling)


def offload_plan(
    settings: Settings,
    spec: ModelSpec,
    path: Path,
    hardware: HardwareInfo,
    cache: PromptCacheBudget | None = None,
) -> OffloadPlan:
    """GPU layers for `spec` on this hardware (--gpu-layers, else the registry's, else auto),
    and its context for --ctx auto. With `cache`, the prompt caches' budget is counted: the
    part they do not hold yet is promised, and the models share the machine's RAM less all of
    it."""
    return _plan(settings, spec, read_model_memory(path), hardware, cache)


def hub_file_plan(
    settings: Settings,
    spec: ModelSpec,
    hardware: HardwareInfo,
    access: HubAccess,
    headers: HubHeaders | None = None,
    cache: PromptCacheBudget | None = None,
) -> OffloadPlan:
    """The plan `offload_plan` would make once the file is here, from its header on the hub
    (range requests: the header and tensor table, not the weights)."""
    header = (headers or HubHeaders()).read(spec, access)
    return _plan(settings, spec, model_memory(header), hardware, cache)


def _plan(
    settings: Settings,
    spec: ModelSpec,
    model: ModelMemory,
    hardware: HardwareInfo,
    cache: PromptCacheBudget | None,
) -> OffloadPlan:
    local = plan_load(
        model,
        hardware,
        engine_config(settings, spec),
        setting=settings.gpu_layers,
        registry=spec.n_gpu_layers,
        ram_promised_bytes=cache.room_left() if cache is not None else 0,
        ram_withheld_bytes=cache.budget_bytes if cache is not None else 0,
    )
    endpoints, use = rpc_workers(settings, spec)
    if not endpoints:
        return local
    if use == "needed" and local.fits:
        return msgspec.structs.replace(
            local,
            rpc_reason=f"the model fits this machine, so the RPC workers "
            f"({', '.join(map(str, endpoints))}) are not used (--rpc-use always would use them)",
        )
    # Asked now, not remembered: what a worker has free changes with its other work.
    workers = [probe(endpoint) for endpoint in endpoints]
    return plan_rpc(local, model, local.estimate.kv, workers, use, settings.rpc_wait)


def rpc_workers(settings: Settings, spec: ModelSpec) -> tuple[list[Endpoint], RpcUse]:
    """The workers a model may spread over: its own list (always used), else --rpc."""
    if spec.rpc:
        return parse_endpoints(spec.rpc), "always"
    return parse_endpoints(list(settings.rpc)), settings.rpc_use


def planned_config(config: EngineConfig, plan: OffloadPlan) -> EngineConfig:
    """`config` with the context the plan chose where it was auto, and its RPC layers."""
    if plan.rpc is not None:
        config = msgspec.structs.replace(config, rpc=plan.rpc)
    if config.n_ctx is not None or config.embedding is not None:
        return config
    return msgspec.structs.replace(config, n_ctx=plan.estimate.context_per_slot)


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
        self.hub_headers = HubHeaders()

    def plan(self, spec: ModelSpec, path: Path) -> OffloadPlan:
        # The prompt caches may still grow to the budget: that memory is promised already, and
        # the models' estimates share the machine's RAM less the whole budget.
        return offload_plan(self._settings, spec, path, self._probe.read(), self._cache)

    def plan_hub_file(self, spec: ModelSpec, access: HubAccess) -> OffloadPlan:
        hardware = self._probe.read()
        return hub_file_plan(self._settings, spec, hardware, access, self.hub_headers, self._cache)

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


def draft_model_file(
    settings: Settings, spec_for: Callable[[str], ModelSpec], files: ModelFiles
) -> Path | None:
    """The file of --draft-model: a .gguf path as given, else the registry or hub model it
    names, downloaded (and checked) now, at start-up, like any model before its first load."""
    name = settings.draft_model
    if name is None:
        return None
    if settings.speculative == "off":
        raise ConfigError(
            "--draft-model drafts for speculative decoding: it needs --speculative auto"
        )
    given = Path(name).expanduser()
    if given.suffix.lower() == ".gguf" and given.is_file():
        return given
    try:
        spec = spec_for(name)
    except LocalLabError as exc:  # an unknown id, a hub name refused or not listed
        raise ConfigError(f"--draft-model: {exc}") from None
    if spec.kind != "chat":
        raise ConfigError(
            f"--draft-model {name!r} is an {spec.kind} model; a draft model generates"
        )
    log.info("draft model %s: %s/%s", spec.id, spec.repo, spec.file)
    return files.fetch(spec)


def local_engine_opener(
    settings: Settings,
    probe: HardwareProbe | None = None,
    cache: PromptCacheBudget | None = None,
    draft_model: Path | None = None,
) -> EngineOpener:
    """Plan the offload on the hardware as it is now (models unloaded to make room have freed
    theirs), then load. Whether the model fits at all is the manager's to judge first.

    `probe` reads GPUs and memory (default: this machine's); tests simulate readings.
    `draft_model` (draft_model_file) drafts for every chat model it opens.
    """
    hardware_probe = probe or machine_probe()

    async def open_planned(spec: ModelSpec, path: Path) -> EngineClient:
        def plan() -> OffloadPlan:
            return offload_plan(settings, spec, path, hardware_probe.read(), cache)

        planned = await asyncio.to_thread(plan)
        config = planned_config(engine_config(settings, spec, cache), planned)
        if draft_model is not None and config.embedding is None:
            config = msgspec.structs.replace(config, draft_model=str(draft_model))
        log_offload_plan(spec.id, planned, config)
        return await open_engine(
            path,
            config,
            planned.estimate.gpu_layers,
            settings.engine_isolation,
            settings.log_level,
            settings.log_format,
        )

    return open_planned


def log_offload_plan(model_id: str, plan: OffloadPlan, config: EngineConfig) -> None:
    estimate = plan.estimate
    log.info(
        "model %s: %d of %d layers on the GPU (%s: %s); %d slots x %d tokens of context; "
        "estimated VRAM %s, RAM %s",
        model_id,
        estimate.gpu_layers - plan.rpc_layers,  # the workers' layers have lines of their own
        estimate.total_layers,
        estimate.decided_by,
        plan.reason,
        estimate.parallel,
        estimate.context_per_slot,
        human_bytes(estimate.vram_bytes),
        human_bytes(estimate.ram_bytes),
    )
    if config.embedding is None:
        log.info(
            "model %s: context %s tokens per slot x %d slots (%s); KV cache %s K, %s V, %s%s",
            model_id,
            f"{estimate.context_per_slot:,}",
            estimate.parallel,
            plan.context_reason or f"set: {config.n_ctx:,}",
            estimate.cache_type_k.value,
            estimate.cache_type_v.value,
            human_bytes(estimate.kv_cache_bytes),
            flash_attention_note(config),
        )
    if plan.rpc_reason:
        log.info("model %s: %s", model_id, plan.rpc_reason)
    if plan.rpc is not None:
        for line in rpc_plan_lines(plan):
            log.info("model %s: %s", model_id, line)
    if plan.warning:
        log.warning("model %s: %s", model_id, plan.warning)


def rpc_plan_lines(plan: OffloadPlan) -> list[str]:
    """Each device's layers and bytes, this machine's first."""
    assert plan.rpc is not None
    estimate = plan.estimate
    remote = plan.rpc_layers
    lines = [
        f"this machine: {estimate.total_layers - estimate.gpu_layers} layers and the input "
        f"embeddings, {human_bytes(estimate.ram_bytes)} of RAM"
        + (
            f"; {estimate.gpu_layers - remote} layers on its GPUs"
            if estimate.gpu_layers > remote
            else ""
        )
    ]
    for share in plan.rpc.devices:
        lines.append(
            f"RPC worker {share.endpoint} device {share.device}: {share.layers} layers, "
            f"{human_bytes(share.bytes)} of {human_bytes(share.free_bytes)} free"
        )
    return lines


def flash_attention_note(config: EngineConfig) -> str:
    """What the load log says of flash attention when a quantized V cache decided it."""
    if config.effective_flash_attn is not config.flash_attn:
        return "; flash attention on: a quantized V cache needs it"
    return ""
