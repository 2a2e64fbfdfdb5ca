"""`locallab-gguf pull <id>`: put a model's file on this machine, verified, and say where.

Human messages and progress go to `err`; the file's path, alone, goes to `out`, so that
`$(locallab-gguf pull ID)` is the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from locallab_gguf.cli.progress import ProgressPrinter
from locallab_gguf.models.files import model_files
from locallab_gguf.models.ids import resolve_model_id, with_revision
from locallab_gguf.models.registry import load_registry_file
from locallab_gguf.settings import Settings
from locallab_gguf.sizes import format_bytes


def pull(
    settings: Settings,
    model_id: str | None,
    *,
    revision: str | None,
    env: Mapping[str, str],
    out: TextIO,
    err: TextIO,
) -> Path:
    registry = load_registry_file(settings.models_file)
    # --no-custom-models limits what the server's clients may load; here the operator asks.
    spec = resolve_model_id(registry, model_id or registry.default, allow_custom=True)
    if revision is not None:
        spec = with_revision(spec, revision)
    files = model_files(settings, env)

    already_here = files.local_path(spec) is not None
    printer = None if already_here else ProgressPrinter(spec.file, err, redraw=err.isatty())
    path = files.fetch(spec, printer)

    size = format_bytes(path.stat().st_size)
    if already_here:
        where = "packaged" if files.is_packaged(spec, path) else "in the cache"
        err.write(f"{spec.id} is already on this machine ({where}, {size}); nothing downloaded.\n")
    else:
        err.write(f"{spec.id}: downloaded {size}.\n")
    checked = files.expected_sha256(spec, path)
    if checked is not None:
        err.write(f"sha256 {checked[0]} matches {checked[1]}.\n")
    out.write(f"{path}\n")
    return path
