"""--draft-model through the real server: a smaller model of the same vocabulary drafts for
the served one; a model of another vocabulary is refused for it, with the reason, and the
model is served without a draft model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import Registry
from locallab_gguf.serving.loader import local_engine_opener
from locallab_gguf.serving.model_manager import ModelManager
from tests.conftest import DEFAULT_ID, TEST_SETTINGS
from tests.support.servers import app_of, serving
from tests.support.subprocess_server import CLI, serve
from tests.support.two_models import assembled_gemma

STORY = [{"role": "user", "content": "Write a short story about a storm at sea."}]


def test_a_draft_model_named_by_its_registry_id_drafts_for_the_served_model(
    tmp_path: Path, model_path: Path
) -> None:
    # The default model drafting for itself: its greedy guesses are what a greedy request
    # picks, so most of them are kept.
    with serve(tmp_path, "--draft-model", DEFAULT_ID) as served:
        body = {"model": DEFAULT_ID, "messages": STORY, "max_tokens": 64, "temperature": 0}
        reply = httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
        info = httpx.get(f"{served.url}/system/info", timeout=10).json()["model"]
        assert info["current"]["draft_model"] == model_path.name
        assert info["engine"]["speculation"]["model_accepted"] > 0
        metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
        assert 'source="model"' in metrics


def test_a_draft_model_with_another_vocabulary_is_refused_for_that_model_which_still_serves(
    registry: Registry, model_path: Path
) -> None:
    gemma = assembled_gemma()
    opener = local_engine_opener(TEST_SETTINGS, draft_model=gemma)
    manager = ModelManager(registry, ModelFiles(), opener)
    app = app_of(TEST_SETTINGS, manager, initial_model=DEFAULT_ID)
    with serving(app) as running:
        body = {"model": DEFAULT_ID, "messages": STORY, "max_tokens": 8}
        reply = running.client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        current = running.client.get("/models/current").json()
        assert current["draft_model"] is None
        refused = current["draft_model_refused"]
        assert "vocabulary" in refused
        assert gemma.name in refused and model_path.name in refused


def test_a_draft_model_the_server_cannot_use_stops_it_at_start_up() -> None:
    for flags, reason in [
        (["--draft-model", DEFAULT_ID, "--speculative", "off"], "--speculative auto"),
        (["--draft-model", "no-such-model"], "not in the model registry"),
    ]:
        done = subprocess.run(
            [str(CLI), "serve", "--port", "1", *flags], capture_output=True, text=True, timeout=60
        )
        assert done.returncode != 0
        assert "--draft-model" in done.stderr and reason in done.stderr, done.stderr
