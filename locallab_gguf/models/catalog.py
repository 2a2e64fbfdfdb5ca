"""The models on this machine and the registry's: each with where it is (package, cache or
nowhere), and what a model can do."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from locallab_gguf.errors import LocalLabError
from locallab_gguf.models.files import ModelFiles, model_files
from locallab_gguf.models.ids import DEFAULT_REVISION, HubFile, resolve_model_id
from locallab_gguf.models.registry import ModelSpec, Registry, load_registry_file
from locallab_gguf.models.splits import is_first_part, local_parts
from locallab_gguf.settings import Settings

Where = Literal["package", "cache", "no"]
Capability = Literal["chat", "completion", "tools", "thinking", "embeddings", "rerank"]


class ModelRow(msgspec.Struct, frozen=True):
    id: str
    name: str
    size_bytes: int | None
    local: Where
    is_default: bool
    in_registry: bool = True  # False: a hub file pulled into the cache by its hub id
    path: str | None = None  # the file on this machine


def model_rows(registry: Registry, files: ModelFiles) -> list[ModelRow]:
    """One row per registry model, in its order. Looks only at this machine: listing never
    waits for the network."""
    rows = []
    for spec in registry.models.values():
        path = files.local_path(spec)
        if path is None:
            local: Where = "no"
            size = spec.size_bytes
        else:
            local = "package" if files.is_packaged(spec, path) else "cache"
            size = path.stat().st_size
        rows.append(
            ModelRow(
                spec.id,
                spec.name,
                size,
                local,
                spec.id == registry.default,
                path=None if path is None else str(path),
            )
        )
    return rows


def pulled_hub_rows(registry: Registry, files: ModelFiles) -> list[ModelRow]:
    """The GGUF files in the Hugging Face cache that no registry model names, each under the
    hub id that loads it (`owner/repo:file.gguf`, with `@revision` when not on main)."""
    rows = []
    for hub_file, path in cached_gguf_files(files.cache_dir):
        if not is_first_part(hub_file.file):
            continue  # a split model is listed once, by its first part
        try:
            spec = resolve_model_id(registry, hub_file.model_id, allow_custom=True)
        except LocalLabError:
            continue  # a name no id can spell (the cache holds what any tool put there)
        if registry.models.get(spec.id) is spec:
            continue  # the registry's own row says it is here
        rows.append(
            ModelRow(
                spec.id,
                spec.name,
                sum(part.stat().st_size for part in local_parts(path) if part.exists()),
                "cache",
                is_default=False,
                in_registry=False,
                path=str(path),
            )
        )
    return sorted(rows, key=lambda row: row.id.lower())


def cached_gguf_files(cache_dir: str | None) -> list[tuple[HubFile, Path]]:
    """Every complete .gguf file of a model repository in the cache (None: the default
    cache), at the revision a user would name: main if it points there, else another
    branch or tag, else the commit."""
    # Imported here: huggingface_hub is slow to import, and packaged files never need it.
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        cache = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []  # nothing was ever pulled
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            refs = sorted(revision.refs)
            name = (
                DEFAULT_REVISION
                if DEFAULT_REVISION in revision.refs
                else (refs[0] if refs else revision.commit_hash)
            )
            for cached in revision.files:
                if not cached.file_name.lower().endswith(".gguf"):
                    continue
                file = cached.file_path.relative_to(revision.snapshot_path).as_posix()
                found.append((HubFile(repo.repo_id, file, name), cached.file_path))
    return found


def model_capabilities(spec: ModelSpec, chat_template: str | None) -> list[Capability]:
    """What requests a model answers, as the server decides it: a chat model with a chat
    template chats and calls tools (any template: a generic tool format where it has none of
    its own); one without is a base model that only completes text; every chat model also
    embeds (pooled as its GGUF says, else by mean)."""
    if spec.kind == "embedding":
        return ["embeddings"]
    if spec.kind == "reranker":
        return ["rerank"]
    if not chat_template:
        return ["completion", "embeddings"]
    thinking: list[Capability] = ["thinking"] if "<think>" in chat_template else []
    return ["chat", "completion", "tools", *thinking, "embeddings"]


def find_local(
    settings: Settings, env: Mapping[str, str], model_id: str
) -> tuple[ModelSpec, ModelFiles, Path | None]:
    """A model id as the cache commands take it (resolved among the registry and the cached
    hub files, never the network), and its file on this machine, if it is here."""
    registry = load_registry_file(settings.models_file)
    files = model_files(settings, env)
    spec = resolve_model_id(registry, model_id, allow_custom=True, pick=files.pick_cached_hub_file)
    return spec, files, files.local_path(spec)
