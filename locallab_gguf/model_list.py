"""`locallab-gguf models`: the registry as a table, with what is already on this machine."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TextIO

import msgspec

from locallab_gguf.hub import ModelFiles, hub_access
from locallab_gguf.registry import Registry, load_registry_file
from locallab_gguf.settings import Settings
from locallab_gguf.sizes import format_bytes


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


def render_rows(rows: list[ModelRow]) -> str:
    table = [("ID", "NAME", "SIZE", "LOCAL")]
    for row in rows:
        size = format_bytes(row.size_bytes) if row.size_bytes is not None else "?"
        table.append((row.id + (" *" if row.is_default else ""), row.name, size, row.local))
    widths = [max(len(line[column]) for line in table) for column in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line[:3], widths, strict=True))
        + "  "
        + line[3]
        for line in table
    ]
    lines.append("")
    lines.append("* the default model. Download one with `locallab-gguf pull ID`;")
    lines.append("any GGUF on the hub also works as owner/repo:file.gguf.")
    return "\n".join(lines) + "\n"


def print_models(settings: Settings, env: Mapping[str, str], out: TextIO) -> None:
    registry = load_registry_file(settings.models_file)
    files = ModelFiles(settings.cache_dir, access=hub_access(settings, env))
    out.write(render_rows(model_rows(registry, files)))
