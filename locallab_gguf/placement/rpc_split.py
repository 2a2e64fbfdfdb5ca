"""Which of a model's layers go to RPC workers, and how many to each of their devices.

llama.cpp offloads the last `n_gpu_layers` of its `n_layer + 1` layers (the blocks, then the
output layer) and spreads them over its device list in order, by the shares of
`tensor_split`: the RPC workers' devices come first, then local GPUs. So with R layers on the
workers and G on local GPUs, the workers hold the R layers before the last G, the first device
the earliest of them; the CPU keeps the rest and the input embeddings.

A worker's device holds its layers' weights and KV cache, and one batch's compute buffer
(with the logits when it holds the output layer). A model that fits this machine does not
use the workers unless asked (`--rpc-use always`, or `rpc = [...]` on the model in
models.toml): every layer away from the CPU that runs it adds a network round trip per step.
Where the model does not fit, the workers take the fewest layers that make it fit; where
asked, as many as they hold.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from locallab_gguf.engine.rpc.protocol import WorkerFacts
from locallab_gguf.engine.types import RpcDeviceShare, RpcLayers
from locallab_gguf.placement.memory import KvCache, ModelMemory, kv_bytes_per_cell, place
from locallab_gguf.placement.memory import kv_cells_per_slot as cells_per_slot
from locallab_gguf.placement.offload import OffloadPlan
from locallab_gguf.sizes import human_bytes

RpcUse = Literal["needed", "always"]
COMPUTE_ACTIVATIONS = 2

# Kept free on each worker device for what the estimate cannot see (its own allocator's
# slack, other clients' buffers it still holds).
WORKER_SAFETY_FRACTION = 0.05


class _Device(msgspec.Struct, frozen=True):
    endpoint: str
    index: int
    free_bytes: int


def plan_rpc(
    plan: OffloadPlan,
    model: ModelMemory,
    kv: KvCache,
    workers: list[WorkerFacts],
    use: RpcUse,
    wait_s: float,
) -> OffloadPlan:
    """`plan` (this machine's) with layers moved to the workers where needed or asked."""
    if not workers:
        return plan
    devices = [
        _Device(worker.endpoint, index, device.free_bytes)
        for worker in workers
        for index, device in enumerate(worker.devices)
    ]
    local_gpu_layers = plan.estimate.gpu_layers
    room = model.offloadable_layers - local_gpu_layers
    most = _most_remote_layers(model, kv, devices, local_gpu_layers, room)
    remote = most
    if use == "needed":
        remote = next(
            (
                layers
                for layers in range(1, most + 1)
                if _with_remote(plan, model, kv, devices, local_gpu_layers, layers).fits
            ),
            most,
        )
    planned = _with_remote(plan, model, kv, devices, local_gpu_layers, remote)
    rpc = planned.rpc
    assert rpc is not None
    where = ", ".join(f"{share.endpoint} #{share.device}: {share.layers}" for share in rpc.devices)
    if remote == 0:
        reason = f"no layer fits the RPC workers ({_free_text(devices)}); every layer stays here"
        return msgspec.structs.replace(plan, rpc_reason=reason)
    why = (
        "asked (--rpc-use always or the model's rpc list)"
        if use == "always"
        else ("the model does not fit this machine alone")
    )
    reason = (
        f"{remote} of {model.offloadable_layers} layers on RPC workers ({where}), "
        f"{model.offloadable_layers - remote - local_gpu_layers} here: {why}"
    )
    return msgspec.structs.replace(
        planned,
        rpc=msgspec.structs.replace(rpc, wait_s=wait_s),
        rpc_reason=reason,
    )


def _free_text(devices: list[_Device]) -> str:
    return ", ".join(
        f"{device.endpoint} #{device.index} {human_bytes(device.free_bytes)} free"
        for device in devices
    )


def split_layers(remote: int, devices: list[_Device]) -> list[int]:
    """`remote` layers over the devices in proportion to their free memory (llama.cpp's own
    default), as whole layers in device order."""
    total_free = sum(max(device.free_bytes, 0) for device in devices)
    if remote <= 0 or total_free <= 0:
        return [0] * len(devices)
    counts, given, running = [], 0, 0
    for device in devices:
        running += max(device.free_bytes, 0)
        upto = round(remote * running / total_free)
        counts.append(upto - given)
        given = upto
    return counts


def device_bytes(model: ModelMemory, kv: KvCache, first_layer: int, layers: int) -> int:
    """Bytes of `layers` consecutive layers from `first_layer` (n_layer: the output layer) on
    one device: weights, KV cache, and the compute buffer of a device that runs layers."""
    if layers <= 0:
        return 0
    cells = cells_per_slot(kv.context_per_slot) * kv.parallel
    per_cell = kv_bytes_per_cell(model, kv)
    # A device's compute buffer, against llama.cpp's report for the default model on a
    # worker: 12.26 MiB measured for blocks alone (the single activation estimate says 7.5),
    # 101.5 MiB with the output layer (its logits dominate): twice the activations covers both.
    total = COMPUTE_ACTIVATIONS * model.activation_bytes
    for layer in range(first_layer, first_layer + layers):
        if layer < model.n_layer:
            total += model.layer_bytes[layer] + per_cell[layer] * cells
        else:
            total += model.output_bytes + model.tied_head_bytes + model.logits_bytes
    return total


def _shares(
    model: ModelMemory, kv: KvCache, devices: list[_Device], local_gpu_layers: int, remote: int
) -> list[RpcDeviceShare]:
    first = model.offloadable_layers - local_gpu_layers - remote
    shares = []
    for device, layers in zip(devices, split_layers(remote, devices), strict=True):
        shares.append(
            RpcDeviceShare(
                endpoint=device.endpoint,
                device=device.index,
                layers=layers,
                bytes=device_bytes(model, kv, first, layers),
                free_bytes=device.free_bytes,
            )
        )
        first += layers
    return shares


def _fits_devices(shares: list[RpcDeviceShare]) -> bool:
    return all(share.bytes <= share.free_bytes * (1 - WORKER_SAFETY_FRACTION) for share in shares)


def _most_remote_layers(
    model: ModelMemory, kv: KvCache, devices: list[_Device], local_gpu_layers: int, room: int
) -> int:
    # More layers never take less of any device, so the counts that fit are a prefix: bisect.
    low, high = 0, room
    while low < high:
        middle = (low + high + 1) // 2
        if _fits_devices(_shares(model, kv, devices, local_gpu_layers, middle)):
            low = middle
        else:
            high = middle - 1
    return low


def _with_remote(
    plan: OffloadPlan,
    model: ModelMemory,
    kv: KvCache,
    devices: list[_Device],
    local_gpu_layers: int,
    remote: int,
) -> OffloadPlan:
    shares = _shares(model, kv, devices, local_gpu_layers, remote)
    # What stays in RAM: everything not offloaded to a worker or a local GPU.
    local = place(model, remote + local_gpu_layers, kv)
    # Local GPUs follow the workers in llama.cpp's list; their layers are shared evenly (the
    # plan keeps no per-GPU count).
    gpus = max(len(plan.gpus), 1) if local_gpu_layers else 0
    local_gpu_split = [
        local_gpu_layers * (index + 1) // gpus - local_gpu_layers * index // gpus
        for index in range(gpus)
    ]
    rpc = RpcLayers(devices=shares, local_gpu_layers=local_gpu_split)
    estimate = msgspec.structs.replace(
        plan.estimate,
        gpu_layers=remote + local_gpu_layers,
        ram_bytes=local.ram_bytes,
    )
    return msgspec.structs.replace(plan, estimate=estimate, rpc=rpc)
