"""How a model's layers are spread over RPC workers, on the real default model's GGUF, for
workers that report given memory (SmolLM2-135M: 30 blocks + the output layer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from locallab_gguf.cli.rpc_worker import check_address, parse_size
from locallab_gguf.engine.rpc.protocol import DeviceMemory, WorkerFacts
from locallab_gguf.errors import ConfigError
from locallab_gguf.placement.gguf_file import read_gguf_header
from locallab_gguf.placement.memory import KvCache, ModelMemory, model_memory, place
from locallab_gguf.placement.offload import OffloadPlan, plan_offload
from locallab_gguf.placement.rpc_split import (
    WORKER_SAFETY_FRACTION,
    device_bytes,
    plan_rpc,
    split_layers,
)
from tests.support.nvml_standin import MIB, NvmlStandIn, simulated_probe

KV = KvCache(context_per_slot=1024, parallel=2)


@pytest.fixture(scope="module")
def model(model_path: Path) -> ModelMemory:
    return model_memory(read_gguf_header(model_path))


def local_plan(model: ModelMemory, available_bytes: int) -> OffloadPlan:
    probe = simulated_probe(NvmlStandIn([]), offload_supported=False, available_ram=available_bytes)
    hardware = probe.read()
    return plan_offload(model, hardware, kv=KV, requested="auto", decided_by="auto")


def worker(name: str, *free_mib: int) -> WorkerFacts:
    return WorkerFacts(
        endpoint=name,
        version=(7, 0, 0),
        devices=[DeviceMemory(mib * MIB, 2 * mib * MIB) for mib in free_mib],
    )


def test_asked_the_workers_take_what_they_hold_and_the_rest_stays_here(
    model: ModelMemory,
) -> None:
    planned = plan_rpc(
        local_plan(model, 16 * 1024 * MIB),
        model,
        KV,
        [worker("a:1", 40), worker("b:2", 200)],
        "always",
        wait_s=30,
    )
    rpc = planned.rpc
    assert rpc is not None
    shares = rpc.devices
    assert [share.endpoint for share in shares] == ["a:1", "b:2"]
    assert all(share.layers > 0 for share in shares)
    remote = sum(share.layers for share in shares)
    local = model.offloadable_layers - remote
    assert local > 0  # three ways: this machine and both workers
    assert rpc.device_layers == [share.layers for share in shares]
    assert planned.estimate.gpu_layers == remote  # llama.cpp's n_gpu_layers
    for share in shares:
        assert share.bytes <= share.free_bytes * (1 - WORKER_SAFETY_FRACTION)
    # One layer more would overflow some device: the workers hold as much as they can.
    more = [*split_layers(remote + 1, _devices(shares))]
    first = model.offloadable_layers - remote - 1
    overflows = False
    for share, layers in zip(shares, more, strict=True):
        overflows |= device_bytes(model, KV, first, layers) > share.free_bytes * 0.95
        first += layers
    assert overflows
    # This machine keeps the input embeddings and its own layers, no more.
    assert planned.estimate.ram_bytes == place(model, remote, KV).ram_bytes
    assert rpc.wait_s == 30
    assert "a:1 #0" in planned.rpc_reason and "asked" in planned.rpc_reason


def _devices(shares: list) -> list:  # type: ignore[type-arg]
    from locallab_gguf.placement.rpc_split import _Device

    return [_Device(share.endpoint, share.device, share.free_bytes) for share in shares]


def test_the_last_device_holds_the_output_layer_as_llama_cpp_places_it(
    model: ModelMemory,
) -> None:
    # llama.cpp offloads the last n_gpu_layers of its layers, output layer included, and
    # gives the first devices the earliest: the last device pays for the head and logits.
    one = device_bytes(model, KV, model.n_layer - 1, 1)
    with_output = device_bytes(model, KV, model.n_layer, 1)
    assert with_output - 2 * model.activation_bytes == (
        model.output_bytes + model.tied_head_bytes + model.logits_bytes
    )
    assert one < with_output


def test_needed_takes_the_fewest_layers_that_let_the_model_fit_here(model: ModelMemory) -> None:
    everything_here = local_plan(model, 16 * 1024 * MIB).estimate.ram_bytes
    # A machine short of memory by a few blocks' worth.
    available = everything_here + 256 * MIB - 20 * MIB
    alone = local_plan(model, available)
    assert not alone.fits
    planned = plan_rpc(alone, model, KV, [worker("w:1", 1024)], "needed", wait_s=30)
    assert planned.fits and planned.rpc is not None
    remote = planned.estimate.gpu_layers
    fewer = plan_rpc(alone, model, KV, [worker("w:1", 1024)], "always", wait_s=30)
    assert fewer.estimate.gpu_layers > remote  # asked: as many as the worker holds
    assert "does not fit this machine alone" in planned.rpc_reason


def test_workers_too_small_for_any_layer_leave_the_plan_as_it_was(model: ModelMemory) -> None:
    alone = local_plan(model, 16 * 1024 * MIB)
    planned = plan_rpc(alone, model, KV, [worker("tiny:1", 1)], "always", wait_s=30)
    assert planned.rpc is None
    assert planned.estimate == alone.estimate
    assert "no layer fits the RPC workers" in planned.rpc_reason


def test_layers_are_split_by_free_memory_in_device_order() -> None:
    from locallab_gguf.placement.rpc_split import _Device

    devices = [_Device("a", 0, 100), _Device("b", 0, 300), _Device("c", 0, 0)]
    assert split_layers(8, devices) == [2, 6, 0]
    assert split_layers(0, devices) == [0, 0, 0]
    assert sum(split_layers(31, devices)) == 31


def test_a_worker_listens_on_loopback_unless_the_network_is_allowed() -> None:
    assert check_address("127.0.0.1", allow_network=False) is None
    assert check_address("::1", allow_network=False) is None
    with pytest.raises(ConfigError, match="--allow-network") as refused:
        check_address("0.0.0.0", allow_network=False)
    assert "no authentication" in str(refused.value)
    warning = check_address("0.0.0.0", allow_network=True)
    assert warning is not None and "no encryption" in warning


@pytest.mark.parametrize(
    ("text", "size"), [("512MiB", 512 * MIB), ("6GiB", 6 * 1024 * MIB), ("1000", 1000)]
)
def test_worker_memory_sizes_are_read(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_worker_memory_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="--memory"):
        parse_size("lots")


def test_rpc_workers_are_checked_when_the_server_starts(tmp_path: Path) -> None:
    from locallab_gguf.serving.loader import load_settings_registry
    from locallab_gguf.settings import Settings

    models = tmp_path / "models.toml"
    models.write_text(
        'default = "spread"\n\n[models.spread]\nname = "x"\nrepo = "o/r"\n'
        'file = "m.gguf"\nrpc = ["10.0.0.2:port"]\n'
    )
    with pytest.raises(ConfigError, match=r"model 'spread' of .*the port is not a number"):
        load_settings_registry(Settings(models_file=str(models)))
    with pytest.raises(ConfigError, match=r"--rpc: RPC worker 'a:0'"):
        load_settings_registry(Settings(rpc=("a:0",)))
    with pytest.raises(ConfigError, match="--engine-isolation process"):
        load_settings_registry(Settings(rpc=("10.0.0.2:50052",), engine_isolation="thread"))
    assert load_settings_registry(Settings(rpc=("10.0.0.2:50052",))).default


def test_a_model_that_fits_here_does_not_ask_the_workers_unless_told_to(
    model_path: Path,
) -> None:
    from locallab_gguf.errors import RpcWorkerUnavailable
    from locallab_gguf.models.registry import default_models_file, load_registry
    from locallab_gguf.serving.loader import offload_plan
    from locallab_gguf.settings import Settings
    from tests.support.servers import free_port

    spec = load_registry(default_models_file()).get("smollm2-135m-instruct")
    hardware = simulated_probe(NvmlStandIn([]), offload_supported=False).read()
    away = f"127.0.0.1:{free_port()}"  # nobody listens: asking it would fail
    needed = offload_plan(Settings(rpc=(away,), ctx=1024), spec, model_path, hardware)
    assert needed.rpc is None and needed.fits
    assert f"the model fits this machine, so the RPC workers ({away}) are not used" in (
        needed.rpc_reason
    )
    with pytest.raises(RpcWorkerUnavailable, match=away):
        offload_plan(Settings(rpc=(away,), rpc_use="always", ctx=1024), spec, model_path, hardware)
