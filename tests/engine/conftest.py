from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from locallab_gguf.models.registry import Registry
from tests.conftest import DEFAULT_ID, TEST_SETTINGS
from tests.support.engine_harness import EngineHarness, running_engine


@pytest.fixture(scope="module")
def engine_harness(registry: Registry, model_path: Path) -> Iterator[EngineHarness]:
    """The default model's batch engine in this process, as a test server would set it up."""
    with running_engine(model_path, registry.get(DEFAULT_ID), TEST_SETTINGS) as harness:
        yield harness
