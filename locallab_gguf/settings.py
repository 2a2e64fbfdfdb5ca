"""Server settings: defaults < environment (LOCALLAB_*) < command-line flags, validated once.

Each field's description is its `--help` text; the CLI derives one flag and one environment
variable from every field, so the three can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from locallab_gguf.errors import ConfigError

ENV_PREFIX = "LOCALLAB_"

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[int, Meta(ge=1)]


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: Annotated[str, Meta(description="address to bind; 0.0.0.0 exposes the server")] = (
        "127.0.0.1"
    )
    port: Annotated[Port, Meta(description="port to listen on (0 picks a free one)")] = 8000
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
            description="context size in tokens shared by all slots "
            "(default: the model's trained context, at most 8192)"
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


def settings_fields() -> tuple[msgspec.structs.FieldInfo, ...]:
    return msgspec.inspect.type_info(Settings).fields  # type: ignore[attr-defined,no-any-return]


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def field_description(field: msgspec.inspect.Field) -> str:
    meta = field.type
    return getattr(meta, "extra", {}).get("description", "") if meta else ""


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
