"""--ctx auto on simulated memory: the longest context per slot, up to the trained length,
whose plan fits; the floor where none does; fixed contexts as given."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from locallab_gguf.engine.types import EmbeddingMode, EngineConfig, KvCacheType
from locallab_gguf.placement.context import plan_load
from locallab_gguf.placement.hardware import HardwareInfo
from locallab_gguf.placement.memory import KV_CELL_QUANTUM
from locallab_gguf.placement.offload import OffloadPlan
from tests.support.nvml_standin import GIB, H100, MIB, NvmlStandIn, simulated_probe

TRAINED = 8192  # the default model's trained context
AUTO = EngineConfig(n_threads=2, n_threads_batch=2, n_parallel=4, ctx_floor=512)


def machine(available: int, gpus: list[object] | None = None) -> HardwareInfo:
    return simulated_probe(
        NvmlStandIn(gpus or []), offload_supported=bool(gpus), available_ram=available
    ).read()


def planned(path: Path, available: int, config: EngineConfig = AUTO, **kwargs: int) -> OffloadPlan:
    return plan_load(path, machine(available), config, setting=None, registry="auto", **kwargs)


def fixed(path: Path, available: int, context: int, config: EngineConfig = AUTO) -> OffloadPlan:
    return planned(path, available, msgspec.structs.replace(config, n_ctx=context))


@pytest.mark.parametrize("available", [600 * MIB, 750 * MIB, 901 * MIB, 1100 * MIB])
def test_the_chosen_context_is_the_largest_that_fits(model_path: Path, available: int) -> None:
    plan = planned(model_path, available)
    chosen = plan.estimate.context_per_slot
    assert plan.fits
    assert AUTO.ctx_floor <= chosen < TRAINED
    assert chosen % KV_CELL_QUANTUM == 0
    assert fixed(model_path, available, chosen) == msgspec.structs.replace(plan, context_reason="")
    assert not fixed(model_path, available, chosen + KV_CELL_QUANTUM).fits
    assert plan.context_reason.startswith("auto: the most memory holds for 4 slots")


def test_the_trained_context_where_memory_holds_it(model_path: Path) -> None:
    plan = planned(model_path, 8 * GIB)
    assert plan.estimate.context_per_slot == TRAINED
    assert plan.context_reason.startswith("auto: the model's trained context")


def test_the_floor_where_memory_holds_nothing_more_and_the_plan_then_refuses(
    model_path: Path,
) -> None:
    plan = planned(model_path, 200 * MIB)
    assert plan.estimate.context_per_slot == AUTO.ctx_floor
    assert not plan.fits
    assert "the floor (--ctx-floor)" in plan.context_reason


def test_memory_promised_to_the_prompt_caches_is_not_given_to_the_context(
    model_path: Path,
) -> None:
    alone = planned(model_path, 900 * MIB).estimate.context_per_slot
    beside_caches = planned(model_path, 900 * MIB, ram_promised_bytes=200 * MIB)
    assert beside_caches.fits
    assert beside_caches.estimate.context_per_slot < alone


def test_a_quantized_cache_gives_each_slot_a_longer_context(model_path: Path) -> None:
    f16 = planned(model_path, 750 * MIB).estimate.context_per_slot
    q8 = planned(
        model_path,
        750 * MIB,
        msgspec.structs.replace(AUTO, cache_type_k=KvCacheType.Q8_0, cache_type_v=KvCacheType.Q8_0),
    )
    assert q8.estimate.context_per_slot > f16
    assert "q8_0 K / q8_0 V" in q8.context_reason


def test_a_fixed_context_and_an_encoder_are_planned_as_given(model_path: Path) -> None:
    assert fixed(model_path, 8 * GIB, 1024).estimate.context_per_slot == 1024
    assert fixed(model_path, 8 * GIB, 1024).context_reason == ""
    encoder = msgspec.structs.replace(AUTO, embedding=EmbeddingMode())
    assert planned(model_path, 8 * GIB, encoder).estimate.parallel == 1


def test_layers_on_a_gpu_are_not_given_up_for_context(model_path: Path) -> None:
    hardware = machine(64 * GIB, [H100])
    plan = plan_load(model_path, hardware, AUTO, setting=None, registry="auto")
    assert plan.estimate.gpu_layers == plan.estimate.total_layers
    assert plan.estimate.context_per_slot == TRAINED
