"""`locallab-gguf pull <id>`: put a model's file on this machine, verified, and say where.

Human messages and progress go to `err`; the file's path, alone, goes to `out`, so that
`$(locallab-gguf pull ID)` is the path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from locallab_gguf.cli.progress import ProgressPrinter
from locallab_gguf.errors import HubError, HubNotFound, ModelTooLarge, ModelUnavailable
from locallab_gguf.models.files import ModelFiles, model_files
from locallab_gguf.models.ids import names_repository, resolve_model_id, with_revision
from locallab_gguf.models.registry import ModelSpec, load_registry_file
from locallab_gguf.placement.offload import RAM_RESERVE_BYTES
from locallab_gguf.placement.plan_text import plan_summary
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
    force: bool = False,
) -> Path:
    registry = load_registry_file(settings.models_file)
    files = model_files(settings, env)
    asked = model_id or registry.default
    # --no-custom-models limits what the server's clients may load; here the operator asks.
    spec = resolve_model_id(registry, asked, allow_custom=True, pick=files.pick_hub_file)
    if names_repository(asked):
        err.write(f"{asked} means {spec.id}.\n")
    if revision is not None:
        spec = with_revision(spec, revision)

    already_here = files.local_path(spec) is not None
    if not already_here and not files.access.offline:
        _plan_first(settings, spec, files, err, force=force)
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


def _plan_first(
    settings: Settings, spec: ModelSpec, files: ModelFiles, err: TextIO, *, force: bool
) -> None:
    """Say how the model would load here, from its header on the hub, before downloading it;
    refuse one that cannot load unless `force`."""
    # Imported here: planning reads the hardware through llama.cpp's build.
    from locallab_gguf.serving.loader import hub_file_plan, machine_probe
    from locallab_gguf.serving.prompt_cache_budget import PromptCacheBudget

    hardware = machine_probe().read()
    try:
        # The prompt caches' budget, as `serve` would promise it: an auto context leaves it.
        with contextlib.closing(PromptCacheBudget.of_settings(settings.cache_ram)) as cache:
            plan = hub_file_plan(settings, spec, hardware, files.access, cache=cache)
    except HubNotFound:
        raise  # the download would fail the same way
    except (HubError, ModelUnavailable) as exc:  # no ranges here, or a GGUF of no model
        err.write(f"cannot plan {spec.id} before downloading it: {exc}\n")
        return
    err.write(f"plan (as `serve` would load it): {plan_summary(plan)}\n")
    if plan.fits or force:
        return
    raise ModelTooLarge(
        f"{spec.id} cannot load on this machine as `serve` would load it: it needs about "
        f"{format_bytes(plan.estimate.ram_bytes)} of RAM (keeping "
        f"{format_bytes(RAM_RESERVE_BYTES)} for the system) and "
        f"{format_bytes(plan.ram_available_bytes)} is available. Nothing was downloaded; "
        "`locallab-gguf pull --force` downloads it anyway.",
        needed_bytes=plan.ram_needed_bytes,
        available_bytes=plan.ram_available_bytes,
    )
