from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgspec
import pytest

# The tests never reach the internet; set before huggingface_hub is imported anywhere.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import Registry, default_models_file, load_registry
from locallab_gguf.placement.hardware import HardwareProbe
from locallab_gguf.ratelimit import Clock
from locallab_gguf.serving.loader import LocalPlanner, local_engine_opener, residency_policy
from locallab_gguf.serving.model_manager import EngineOpener, ModelManager
from locallab_gguf.serving.prompt_cache_budget import PromptCacheBudget
from locallab_gguf.settings import Settings
from tests.support.local_hub import LocalHub
from tests.support.reference import Reference
from tests.support.servers import RunningServer, app_of, serving

DEFAULT_ID = "smollm2-135m-instruct"
# Small contexts keep every test server's KV cache small; the tests never need more. Rate
# limits are off: the tests send more than a client may; test_rate_limits turns them on. What
# a drafted token costs is given, not timed: which drafts are taken must not follow the speed
# of the machine a test runs on (tests/engine/test_speculation.py times it once).
TEST_SETTINGS = Settings(
    threads=2, threads_batch=2, ctx=1024, parallel=4, rate_limit=False, draft_cost=0.35
)
# For the tests that compare one generation with another (alone, batched, cached, against
# llama-cpp-python's own loop): only the deterministic mode promises those are equal.
DETERMINISTIC_SETTINGS = msgspec.structs.replace(TEST_SETTINGS, deterministic=True)


# A test's tier is the folder it lives in; each gets the marker of that name (registered in
# pyproject.toml), so `pytest -m "unit or engine"` picks the fast loop from anywhere.
TIERS = ("unit", "engine", "api", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(root).parts
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry(default_models_file())


@pytest.fixture(scope="session")
def model_path(registry: Registry) -> Path:
    return ModelFiles().resolve(registry.get(DEFAULT_ID))


@pytest.fixture(scope="session")
def reference(model_path: Path) -> Iterator[Reference]:
    """llama-cpp-python's own greedy answers on this machine: what model text is checked
    against (tests/support/reference.py says why never a literal)."""
    with Reference.open(model_path, TEST_SETTINGS) as opened:
        yield opened


ServerFactory = Callable[..., RunningServer]


@pytest.fixture
def make_server(registry: Registry) -> Iterator[ServerFactory]:
    """Start a real server with the given settings (and registry, files, engine opener, the
    clock of its rate limits, and the hardware probe of /system/info)."""
    with ExitStack() as stack:

        def make(
            settings: Settings = TEST_SETTINGS,
            *,
            registry_: Registry | None = None,
            files: ModelFiles | None = None,
            opener: EngineOpener | None = None,
            initial_model: str | None = DEFAULT_ID,
            wait_for: str | None = "loaded",
            clock: Clock = time.time,
            hardware: HardwareProbe | None = None,
        ) -> RunningServer:
            # One prompt-cache budget for the server's models, as `serve` makes it.
            cache = PromptCacheBudget.of_settings(settings.cache_ram)
            stack.callback(cache.close)
            manager = ModelManager(
                registry_ or registry,
                files or ModelFiles(),
                opener or local_engine_opener(settings, hardware, cache),
                allow_custom_models=settings.custom_models,
                planner=LocalPlanner(settings, hardware, cache),
                policy=residency_policy(settings),
            )
            app = app_of(
                settings, manager, initial_model=initial_model, clock=clock, hardware=hardware
            )
            return stack.enter_context(serving(app, wait_for=wait_for))

        yield make


@pytest.fixture(scope="module")
def server(registry: Registry) -> Iterator[RunningServer]:
    """One shared server with the default model, for tests that leave it as they found it."""
    manager = ModelManager(registry, ModelFiles(), local_engine_opener(TEST_SETTINGS))
    with serving(app_of(TEST_SETTINGS, manager, initial_model=DEFAULT_ID)) as running:
        yield running


@pytest.fixture(scope="module")
def deterministic_server(registry: Registry) -> Iterator[RunningServer]:
    """As `server`, in the --deterministic mode: for tests that compare generations."""
    manager = ModelManager(registry, ModelFiles(), local_engine_opener(DETERMINISTIC_SETTINGS))
    with serving(app_of(DETERMINISTIC_SETTINGS, manager, initial_model=DEFAULT_ID)) as running:
        yield running


def sse_events(lines: Any) -> list[str]:
    """Parse a text/event-stream into the data of each event, per the SSE spec."""
    events: list[str] = []
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                events.append("\n".join(data))
                data = []
            continue
        if line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        events.append("\n".join(data))
    return events


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A stand-in Hugging Face hub on a free loopback port (tests/support/local_hub.py).

    HF_HUB_OFFLINE=1 (above) makes huggingface_hub refuse every request in this process;
    tests with this fixture let it through, to this hub only: they pass its URL as endpoint.
    """
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with LocalHub().running() as running:
        yield running


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid GGUF of about 1 MiB that no model runs: for tests where only bytes matter."""
    import gguf
    import numpy

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("tiny")
    noise = numpy.random.default_rng(3).standard_normal(256 * 1024).astype(numpy.float32)
    writer.add_tensor("noise", noise)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
