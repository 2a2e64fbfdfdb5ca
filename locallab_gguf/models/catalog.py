"""The registry's models, each with where it is on this machine (package, cache or nowhere)."""

from __future__ import annotations

import msgspec

from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import Registry


class ModelRow(msgspec.Struct, frozen=True):
    id: str
    name: str
    size_bytes: int | None
    local: str  # "package", "cache" or "no"
    is_default: bool


def model_rows(registry: Registry, files: ModelFiles) -> list[ModelRow]:
    """One row per registry model, in its order. Looks only at this machine: listing never
    waits for the network."""
    rows = []
    for spec in registry.models.values():
        path = files.local_path(spec)
        if path is None:
            local, size = "no", spec.size_bytes
        else:
            local = "package" if files.is_packaged(spec, path) else "cache"
            size = path.stat().st_size
        rows.append(ModelRow(spec.id, spec.name, size, local, spec.id == registry.default))
    return rows
