"""What a loaded model takes, where: weights and KV cache in RAM and VRAM."""

from __future__ import annotations

from locallab_gguf.placement.hardware import HardwareInfo
from locallab_gguf.placement.memory import KvCache
from locallab_gguf.placement.offload import OffloadEstimate, estimate_loaded, gpu_layers_request
from locallab_gguf.serving.resident import ResidentModel
from locallab_gguf.settings import Settings


def loaded_footprint(
    settings: Settings, model: ResidentModel, hardware: HardwareInfo
) -> OffloadEstimate:
    """What the loaded model's layers take where, from its GGUF header and the engine."""
    info = model.engine.info
    _, decided_by = gpu_layers_request(settings.gpu_layers, model.spec.n_gpu_layers)
    context_per_slot, parallel = info.kv_shape
    return estimate_loaded(
        model.path,
        hardware,
        gpu_layers=info.n_gpu_layers,
        kv=KvCache(
            context_per_slot=context_per_slot,
            parallel=parallel,
            type_k=info.cache_type_k,
            type_v=info.cache_type_v,
        ),
        decided_by=decided_by,
        rpc_layers=info.rpc.worker_layers if info.rpc else 0,
    )
