"""A long agent prompt on a model trained for it is served at default settings: Gemma 3 270M
(trained for 32,768 tokens) under --ctx auto takes a 12,000-token prompt on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from locallab_gguf.models.files import ModelFiles
from locallab_gguf.settings import Settings
from tests.conftest import ServerFactory
from tests.support.two_models import (
    GEMMA_FILE,
    GEMMA_ID,
    GEMMA_REPO,
    SMOLLM2_SHA,
    assembled_gemma,
    hub_cache_with,
    two_model_registry,
)

# Ten tokens a sentence: 1,201 of them make a little over 12,000 tokens.
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 1201


@pytest.fixture
def gemma_files(tmp_path: Path) -> ModelFiles:
    return ModelFiles(
        str(hub_cache_with(tmp_path / "hub", {(GEMMA_REPO, GEMMA_FILE): assembled_gemma()}))
    )


@pytest.mark.slow  # about 12,000 tokens of prompt: minutes on two busy cores
def test_gemma_at_default_settings_accepts_a_12000_token_prompt(
    make_server: ServerFactory, gemma_files: ModelFiles
) -> None:
    # The defaults but for the rate limit, which the tests keep off.
    settings = Settings(rate_limit=False)
    assert settings.ctx == "auto"
    server = make_server(
        settings,
        registry_=two_model_registry(GEMMA_ID + "-twin", SMOLLM2_SHA),
        files=gemma_files,
        initial_model=GEMMA_ID,
    )
    current = server.client.get("/models/current").json()
    assert current["context_length"] > 12_000
    reply = server.client.post(
        "/v1/completions",
        json={"model": GEMMA_ID, "prompt": LONG_PROMPT, "max_tokens": 2, "temperature": 0},
        timeout=600,
    )
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    assert 12_000 <= usage["prompt_tokens"] < current["context_length"]
    assert 1 <= usage["completion_tokens"] <= 2
