"""Key roles and download guards on real servers, through the official clients and raw HTTP.

A user key generates, embeds, tokenizes and lists; only an admin key (`admin:KEY`) loads,
unloads, pulls and deletes, or makes the server download a model on demand (unless
--allow-pull). --max-cache-bytes refuses a download that would pass it before it starts.
The hub is tests/local_hub.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anthropic
import msgspec
import ollama
import openai
import pytest

from locallab_gguf.api.common.middleware.access import AccessControl
from locallab_gguf.api.common.middleware.keys import ApiKeys, load_api_keys
from locallab_gguf.errors import DownloadBudgetExceeded
from locallab_gguf.models.budget import CacheBudget, cached_gguf_bytes
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.settings import Settings
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.e2e.test_model_downloads import CUSTOM_ID, CUSTOM_REPO, HUB_REPO, SMOL_FILE, hub_registry
from tests.support.local_hub import LocalHub
from tests.support.servers import RunningServer

USER_KEY = "user-key-123"
ADMIN_KEY = "admin-key-456"
KEYED = msgspec.structs.replace(TEST_SETTINGS, api_keys=(USER_KEY, f"admin:{ADMIN_KEY}"))
USER = {"Authorization": f"Bearer {USER_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NEEDS_ADMIN = "needs an admin key; the key sent is a user key"
HI = [{"role": "user", "content": "Hi"}]


def test_key_lines_name_their_role_and_plain_keys_stay_user_keys(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("plain-key\nadmin:boss-key  # the operator\nuser:named-user\n")
    keys = load_api_keys(["admin: env-admin"], str(key_file))
    assert keys.role_of("Bearer plain-key") == "user"
    assert keys.role_of("Bearer named-user") == "user"
    assert keys.role_of("Bearer boss-key") == "admin"
    assert keys.role_of("Bearer env-admin") == "admin"
    # The prefix is how the operator writes it, not part of the key clients send.
    assert keys.role_of("Bearer admin:boss-key") is None
    assert keys.role_of("Bearer nope") is None
    # Without keys every request may do everything, as before roles existed.
    assert ApiKeys([]).role_of(None) == "admin"


def test_keys_without_an_admin_key_are_named_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        AccessControl(msgspec.structs.replace(TEST_SETTINGS, api_keys=("only-user",)), time.time)
    assert "none of the API keys is an admin key" in caplog.text
    assert "only-user" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        AccessControl(KEYED, time.time)
        AccessControl(TEST_SETTINGS, time.time)
    assert "admin key" not in caplog.text


def test_a_user_key_generates_and_lists_but_only_an_admin_key_manages_models(
    make_server: ServerFactory,
) -> None:
    server = make_server(KEYED)
    base = f"{server.url}/v1"
    with openai.OpenAI(base_url=base, api_key=USER_KEY, max_retries=0) as client:
        answer = client.chat.completions.create(model=DEFAULT_ID, messages=HI, max_tokens=2)  # type: ignore[arg-type]
        assert answer.model == DEFAULT_ID
        assert DEFAULT_ID in [model.id for model in client.models.list()]
    with anthropic.Anthropic(base_url=server.url, api_key=USER_KEY, max_retries=0) as claude:
        message = claude.messages.create(model=DEFAULT_ID, max_tokens=2, messages=HI)  # type: ignore[arg-type]
        assert message.model == DEFAULT_ID
    user = ollama.Client(host=server.url, headers=USER)
    try:
        assert user.chat(model=DEFAULT_ID, messages=HI, options={"num_predict": 2}).done
        assert any(model.model == f"{DEFAULT_ID}:latest" for model in user.list().models)
        for refused in (lambda: user.pull(DEFAULT_ID), lambda: user.delete("not-here")):
            with pytest.raises(ollama.ResponseError) as raised:
                refused()
            assert raised.value.status_code == 403 and NEEDS_ADMIN in raised.value.error
    finally:
        user.close()

    # Raw HTTP: each surface's error shape, naming the route and the role it needs.
    load = server.client.post("/models/load", json={"model_id": DEFAULT_ID}, headers=USER)
    assert load.status_code == 403
    assert load.json() == {
        "detail": f"POST /models/load {NEEDS_ADMIN}. Ask the server's operator for an admin key "
        "(a key line 'admin:KEY' in --api-key-file or --api-key)."
    }
    unload = server.client.post("/models/unload", headers=USER)
    assert unload.status_code == 403 and NEEDS_ADMIN in unload.json()["detail"]
    pull = server.client.post("/api/pull", json={"model": DEFAULT_ID}, headers=USER)
    assert pull.status_code == 403 and NEEDS_ADMIN in pull.json()["error"]
    delete = server.client.request(
        "DELETE", "/api/delete", json={"model": "not-here"}, headers=USER
    )
    assert delete.status_code == 403 and NEEDS_ADMIN in delete.json()["error"]
    assert server.services.manager.current is not None  # nothing was unloaded

    # A user key's keep_alive of 0 does not unload the pinned start-up model: that is an unload.
    zero = server.client.post(
        "/api/generate", json={"model": DEFAULT_ID, "keep_alive": 0}, headers=USER
    )
    assert zero.status_code == 200 and zero.json()["done_reason"] == "load", zero.text
    time.sleep(0.5)
    assert server.services.manager.resident_model(DEFAULT_ID) is not None

    # The admin key passes the same routes.
    missing = server.client.request(
        "DELETE", "/api/delete", json={"model": "not-here"}, headers=ADMIN
    )
    assert missing.status_code == 404
    assert server.client.post("/models/unload", headers=ADMIN).status_code == 200
    reloaded = server.client.post("/models/load", json={"model_id": DEFAULT_ID}, headers=ADMIN)
    assert reloaded.status_code == 200 and reloaded.json()["status"] == "success"
    with openai.OpenAI(base_url=base, api_key=USER_KEY, max_retries=0) as client:
        again = client.chat.completions.create(model=DEFAULT_ID, messages=HI, max_tokens=2)  # type: ignore[arg-type]
        assert again.model == DEFAULT_ID


def _hub_server(
    make_server: ServerFactory, hub: LocalHub, tmp_path: Path, settings: Settings, **files: object
) -> RunningServer:
    cache = ModelFiles(
        str(tmp_path / "cache"),
        access=HubAccess(endpoint=hub.url),
        **files,  # type: ignore[arg-type]
    )
    return make_server(settings, registry_=hub_registry(), files=cache)


def test_a_user_key_cannot_make_the_server_download_but_an_admin_key_can(
    make_server: ServerFactory, hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, SMOL_FILE, model_path)
    hub.add(CUSTOM_REPO, SMOL_FILE, model_path)
    server = _hub_server(make_server, hub, tmp_path, KEYED)
    asked = hub.count()
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=USER_KEY, max_retries=0) as client:
        for model in ("smollm2-hub", CUSTOM_ID):  # in the registry, and a hub file outside it
            with pytest.raises(openai.PermissionDeniedError) as refused:
                client.chat.completions.create(model=model, messages=HI, max_tokens=1)  # type: ignore[arg-type]
            message = refused.value.message
            assert "is not on this machine" in message and "--allow-pull" in message
    counted = server.client.post(
        "/v1/messages/count_tokens", json={"model": CUSTOM_ID, "messages": HI}, headers=USER
    )
    assert counted.status_code == 403
    assert counted.json()["error"]["type"] == "permission_error"
    assert hub.count() == asked  # refused before the hub was asked anything

    # An admin key's request downloads it; then it is on this machine and a user key uses it.
    admin = server.client.post(
        "/v1/chat/completions",
        json={"model": CUSTOM_ID, "messages": HI, "max_tokens": 1},
        headers=ADMIN,
    )
    assert admin.status_code == 200, admin.text
    user = server.client.post(
        "/v1/chat/completions",
        json={"model": CUSTOM_ID, "messages": HI, "max_tokens": 1},
        headers=USER,
    )
    assert user.status_code == 200, user.text


def test_allow_pull_lets_a_user_key_download_on_demand(
    make_server: ServerFactory, hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, SMOL_FILE, model_path)
    server = _hub_server(
        make_server, hub, tmp_path, msgspec.structs.replace(KEYED, allow_pull=True)
    )
    reply = server.client.post(
        "/api/chat",
        json={
            "model": "smollm2-hub",
            "messages": HI,
            "stream": False,
            "options": {"num_predict": 1},
        },
        headers=USER,
    )
    assert reply.status_code == 200, reply.text


def test_a_download_past_the_cache_budget_is_refused_before_it_starts_naming_both_numbers(
    make_server: ServerFactory, hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    size = tiny_gguf.stat().st_size
    hub.add(CUSTOM_REPO, "one.gguf", tiny_gguf)
    hub.add(CUSTOM_REPO, "two.gguf", tiny_gguf, etag="another-blob")
    budget = size + size // 2  # room for one of them
    server = _hub_server(make_server, hub, tmp_path, TEST_SETTINGS, budget=CacheBudget(budget))
    pulled = server.client.post(
        "/api/pull", json={"model": f"{CUSTOM_REPO}:one.gguf", "stream": False}
    )
    assert pulled.status_code == 200 and pulled.json()["status"] == "success", pulled.text
    assert cached_gguf_bytes(tmp_path / "cache") == size
    gets = hub.downloads()

    left = budget - size
    second = f"{CUSTOM_REPO}:two.gguf"
    numbers = f"needs {size:,} bytes, but only {left:,} bytes are left of the {budget:,} bytes"
    refused = server.client.post("/api/pull", json={"model": second, "stream": False})
    assert refused.status_code == 507 and numbers in refused.json()["error"], refused.text
    load = server.client.post("/models/load", json={"model_id": second})
    assert load.status_code == 507 and numbers in load.json()["detail"]
    chat = server.client.post(
        "/v1/chat/completions", json={"model": second, "messages": HI, "max_tokens": 1}
    )
    assert chat.status_code == 507 and numbers in chat.json()["error"]["message"]
    assert hub.downloads() == gets  # only HEADs and header reads: no file was transferred
    assert not list((tmp_path / "cache").rglob("*.incomplete"))
    assert cached_gguf_bytes(tmp_path / "cache") == size


def test_two_downloads_at_once_cannot_each_take_what_is_left(tmp_path: Path) -> None:
    budget = CacheBudget(100)
    with budget.admit("a", tmp_path, "blob-a", 60):
        with budget.admit("a again", tmp_path, "blob-a", 60):  # the same blob: counted once
            pass
        with (
            pytest.raises(DownloadBudgetExceeded, match="only 40 bytes are left of the 100"),
            budget.admit("b", tmp_path, "blob-b", 60),
        ):
            pass
    with budget.admit("b", tmp_path, "blob-b", 60):
        pass


def test_the_environment_and_flags_set_roles_and_guards() -> None:
    from locallab_gguf.setting_flags import load_settings

    settings = load_settings(
        {"LOCALLAB_API_KEYS": "admin:a1,u1", "LOCALLAB_MAX_CACHE_BYTES": "1000"},
        {"allow_pull": True},
    )
    assert settings.api_keys == ("admin:a1", "u1")
    assert settings.max_cache_bytes == 1000 and settings.allow_pull
    keys = load_api_keys(settings.api_keys, None)
    assert keys.role_of("Bearer a1") == "admin" and keys.role_of("Bearer u1") == "user"
