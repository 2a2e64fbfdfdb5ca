"""Settings as the CLI and the docs offer them: one flag per field, in groups.

`serve --help` and docs/configuration.md both read `flag_groups()`, so the help text, the
flag and the page can never disagree with the Settings field they come from.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta

from locallab_gguf.durations import InvalidKeepAlive
from locallab_gguf.engine.types import KvCacheType, quantized_v_needs_flash_attention
from locallab_gguf.errors import ConfigError
from locallab_gguf.settings import Settings, env_name

# How `serve --help` and docs/configuration.md group the settings: (title, what the group is
# about, field names). A field named in no group is shown under "Other" until it is added here.
SETTING_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "Server",
        "where the server listens, what it serves besides the API, how it stops",
        ("host", "port", "ui", "engine_isolation", "shutdown_grace"),
    ),
    (
        "Models",
        "which models are served and under which names, where their files come from and what "
        "may be downloaded, how long they stay loaded, the Responses API's stored responses",
        (
            "model",
            "models_file",
            "cache_dir",
            "offline",
            "custom_models",
            "hf_token",
            "max_models",
            "keep_alive",
            "autoload",
            "room_wait",
            "default_max_tokens",
            "aliases",
            "allow_pull",
            "max_cache_bytes",
            "responses_max",
            "responses_store",
        ),
    ),
    (
        "Memory and GPU",
        "threads, GPU offload, context, slots, speculative decoding, KV cache and the prompt "
        "cache of each model",
        (
            "threads",
            "threads_batch",
            "gpu_layers",
            "ctx",
            "ctx_floor",
            "parallel",
            "deterministic",
            "speculative",
            "draft_max",
            "draft_model",
            "draft_cost",
            "kv_layout",
            "cache_type_k",
            "cache_type_v",
            "flash_attn",
            "cache_ram",
            "prompt_cache_dir",
            "queue_size",
        ),
    ),
    (
        "RPC workers",
        "layers of a model on other machines' devices, served by `locallab-gguf rpc-worker` "
        "(see docs/rpc.md)",
        ("rpc", "rpc_use", "rpc_wait"),
    ),
    (
        "Limits and keys",
        "request and connection limits, rate limits, API keys, proxies and CORS",
        (
            "max_body_bytes",
            "header_timeout",
            "body_timeout",
            "max_connections",
            "rate_limit",
            "requests_per_minute",
            "burst",
            "rate_limit_store",
            "rate_limit_fail",
            "rate_limit_max_clients",
            "api_keys",
            "api_key_file",
            "trusted_proxies",
            "client_id_header",
            "cors_origins",
        ),
    ),
    (
        "Logging",
        "log verbosity and format (each request also gets one access line)",
        ("log_level", "log_format", "log_repeat_interval"),
    ),
)
OTHER_GROUP = "Other"


class FlagSpec(msgspec.Struct, frozen=True):
    """What the CLI needs to offer one setting as a flag.

    A list-valued setting (`tuple[str, ...]`) is `repeated`: its flag may be given many times
    and its environment variable holds a comma-separated list. Its flag is named by
    `Meta(extra={"flag": ...})` when the singular reads better (`--api-key` for `api_keys`).
    """

    name: str
    flag: str
    help: str
    kind: type
    default: Any
    choices: tuple[str, ...] | None = None
    repeated: bool = False


def flag_specs() -> list[FlagSpec]:
    hints = typing.get_type_hints(Settings, include_extras=True)
    defaults = Settings()
    specs = []
    for name in Settings.__struct_fields__:
        described = _describe(hints[name])
        specs.append(
            FlagSpec(
                name,
                "--" + (described.flag or name.replace("_", "-")),
                described.description,
                described.kind,
                getattr(defaults, name),
                described.choices,
                described.repeated,
            )
        )
    return specs


class _Described(msgspec.Struct):
    kind: type = str
    description: str = ""
    flag: str | None = None
    choices: tuple[str, ...] | None = None
    repeated: bool = False


class FlagGroup(msgspec.Struct, frozen=True):
    title: str
    about: str
    specs: tuple[FlagSpec, ...]


def flag_groups() -> list[FlagGroup]:
    """The flags in SETTING_GROUPS' order; fields no group names come last, under "Other"."""
    specs = {spec.name: spec for spec in flag_specs()}
    groups = [
        FlagGroup(title, about, tuple(specs.pop(name) for name in names if name in specs))
        for title, about, names in SETTING_GROUPS
    ]
    if specs:
        groups.append(
            FlagGroup(OTHER_GROUP, "settings not yet given a group", tuple(specs.values()))
        )
    return [group for group in groups if group.specs]


def _describe(hint: Any) -> _Described:
    """Peel Annotated/Optional/tuple layers down to the base type, keeping the metadata."""
    described = _Described()
    while True:
        if typing.get_origin(hint) is Annotated:
            hint, *metadata = typing.get_args(hint)
            for meta in metadata:
                if not isinstance(meta, Meta):
                    continue
                if meta.description and not described.description:
                    described.description = meta.description
                if meta.extra and "flag" in meta.extra and described.flag is None:
                    described.flag = meta.extra["flag"]
            continue
        if typing.get_origin(hint) in (Union, types.UnionType):
            members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            if len(members) > 1:
                # "auto" or a number: the flag takes text and msgspec picks the member.
                return described
            hint = members[0]
            continue
        if typing.get_origin(hint) is tuple:
            hint = typing.get_args(hint)[0]
            described.repeated = True
            continue
        if typing.get_origin(hint) is Literal:
            described.choices = tuple(str(value) for value in typing.get_args(hint))
            return described
        described.kind = hint
        return described


def load_settings(env: Mapping[str, str], flags: Mapping[str, Any]) -> Settings:
    """Merge the environment and the flags that were given (None means not given)."""
    repeated = {spec.name for spec in flag_specs() if spec.repeated}
    values: dict[str, Any] = {}
    for name in Settings.__struct_fields__:
        raw = env.get(env_name(name))
        if raw is not None and raw != "":
            values[name] = _split_list(raw) if name in repeated else raw
    values.update({name: value for name, value in flags.items() if value is not None})
    try:
        # strict=False lets "8000" from the environment become an int.
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from exc
    try:
        settings.keep_alive_seconds  # noqa: B018 - a bad duration fails at start-up
    except InvalidKeepAlive as exc:
        raise ConfigError(f"invalid setting: {exc}") from exc
    if settings.deterministic and settings.kv_layout == "unified":
        # In one pool a token's attention spans the other slots' cells, so what else is
        # cached changes its arithmetic: the promise of --deterministic cannot hold.
        raise ConfigError(
            "invalid setting: --deterministic needs --kv-layout per-slot "
            "(in a unified pool a request's arithmetic depends on the other slots)"
        )
    if settings.flash_attn == "off" and settings.cache_type_v != "f16":
        # llama.cpp attends over a quantized V cache in its flash-attention kernel only.
        raise ConfigError(
            "invalid setting: "
            + quantized_v_needs_flash_attention(KvCacheType(settings.cache_type_v))
        )
    return settings


def _split_list(raw: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: the environment's form of a repeatable flag."""
    return [item.strip() for item in raw.split(",") if item.strip()]
