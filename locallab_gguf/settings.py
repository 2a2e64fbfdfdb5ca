"""Server settings: defaults < environment (LOCALLAB_*) < command-line flags, validated once.

Each field's description is its `--help` text; the CLI derives one flag and one environment
variable from every field, so the three can never disagree.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta

from locallab_gguf.errors import ConfigError

ENV_PREFIX = "LOCALLAB_"

Port = Annotated[int, Meta(ge=1, le=65535)]
Positive = Annotated[int, Meta(ge=1)]


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: Annotated[str, Meta(description="address to bind; 0.0.0.0 exposes the server")] = (
        "127.0.0.1"
    )
    port: Annotated[Port, Meta(description="port to listen on")] = 8000
    model: Annotated[
        str | None, Meta(description="registry id of the model to serve (default: the registry's)")
    ] = None
    models_file: Annotated[
        str | None,
        Meta(description="path of the model registry (default: the bundled models.toml)"),
    ] = None
    threads: Annotated[
        Positive | None, Meta(description="threads for generation (default: physical cores)")
    ] = None
    threads_batch: Annotated[
        Positive | None, Meta(description="threads for prompt processing (default: logical cores)")
    ] = None
    ctx: Annotated[
        Annotated[int, Meta(ge=64)] | None,
        Meta(
            description="context of each request in tokens, prompt and answer together; every "
            "slot holds this much KV cache (default: the model's trained context, at most 4096)"
        ),
    ] = None
    parallel: Annotated[
        Annotated[int, Meta(ge=1, le=256)],
        Meta(description="requests decoded together, one KV sequence each"),
    ] = 8
    queue_size: Annotated[
        Annotated[int, Meta(ge=0)],
        Meta(description="requests that may wait for a free slot before 503"),
    ] = 64
    default_max_tokens: Annotated[
        Positive, Meta(description="new tokens generated when a request does not say")
    ] = 512
    max_body_bytes: Annotated[
        Positive, Meta(description="largest request body accepted (413 above it)")
    ] = 1024 * 1024
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], Meta(description="log verbosity")
    ] = "info"


class FlagSpec(msgspec.Struct, frozen=True):
    """What the CLI needs to offer one setting as a flag."""

    name: str
    help: str
    kind: type
    default: Any
    choices: tuple[str, ...] | None = None


def flag_specs() -> list[FlagSpec]:
    hints = typing.get_type_hints(Settings, include_extras=True)
    defaults = Settings()
    specs = []
    for name in Settings.__struct_fields__:
        kind, description, choices = _describe(hints[name])
        specs.append(FlagSpec(name, description, kind, getattr(defaults, name), choices))
    return specs


def _describe(hint: Any) -> tuple[type, str, tuple[str, ...] | None]:
    """Peel Annotated/Optional layers down to the base type, keeping the description."""
    description = ""
    while True:
        if typing.get_origin(hint) is Annotated:
            hint, *metadata = typing.get_args(hint)
            for meta in metadata:
                if isinstance(meta, Meta) and meta.description and not description:
                    description = meta.description
            continue
        if typing.get_origin(hint) in (Union, types.UnionType):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
            continue
        if typing.get_origin(hint) is Literal:
            return str, description, tuple(str(value) for value in typing.get_args(hint))
        return hint, description, None


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(env: Mapping[str, str], flags: Mapping[str, Any]) -> Settings:
    """Merge the environment and the flags that were given (None means not given)."""
    values: dict[str, Any] = {}
    for name in Settings.__struct_fields__:
        raw = env.get(env_name(name))
        if raw is not None and raw != "":
            values[name] = raw
    values.update({name: value for name, value in flags.items() if value is not None})
    try:
        # strict=False lets "8000" from the environment become an int.
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from exc
