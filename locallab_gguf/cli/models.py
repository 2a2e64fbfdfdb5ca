"""`locallab-gguf ls` (and its older name `models`): the registry's models and the hub files
pulled into the cache, with their sizes and where each is on this machine."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TextIO

import msgspec

from locallab_gguf.models.catalog import ModelRow, model_rows, pulled_hub_rows
from locallab_gguf.models.files import model_files
from locallab_gguf.models.registry import load_registry_file
from locallab_gguf.settings import Settings
from locallab_gguf.sizes import format_bytes


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


def list_models(
    settings: Settings, env: Mapping[str, str], out: TextIO, *, as_json: bool = False
) -> None:
    registry = load_registry_file(settings.models_file)
    files = model_files(settings, env)
    rows = model_rows(registry, files) + pulled_hub_rows(registry, files)
    if as_json:
        out.write(msgspec.json.encode(rows).decode() + "\n")
    else:
        out.write(render_rows(rows))
