"""`locallab-gguf rm MODEL`: delete a model's downloaded file from the Hugging Face cache.

It removes what DELETE /api/delete removes, with the same function (ModelFiles.remove_cached),
so a model of several files loses all of them in one place. A model that ships inside a
Python package is not the cache's to delete. A model that a running server holds is left
alone: the server keeps reading its file's header (/api/ps, /system/info), and the model may
be answering someone; `locallab-gguf stop MODEL` unloads it first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TextIO

from locallab_gguf.cli.running import resident_ids
from locallab_gguf.cli.server_client import ServerClient
from locallab_gguf.errors import (
    LocalLabError,
    ModelInUse,
    ModelUnavailable,
    ServerUnreachable,
)
from locallab_gguf.models.catalog import find_local
from locallab_gguf.models.splits import local_parts
from locallab_gguf.settings import Settings
from locallab_gguf.sizes import format_bytes

# How long to wait for a server's answer on whether it holds the model: a loopback server
# answers in milliseconds, and no server at all is refused at once.
SERVER_CHECK_SECONDS = 3.0


def remove(
    settings: Settings,
    env: Mapping[str, str],
    model_id: str,
    server: ServerClient,
    out: TextIO,
    err: TextIO,
) -> None:
    spec, files, path = find_local(settings, env, model_id)
    if path is None:
        raise ModelUnavailable(
            f"model {spec.id!r} is not on this machine; nothing to remove "
            "(`locallab-gguf ls` lists what is)"
        )
    if not files.is_packaged(spec, path):
        _refuse_if_resident(spec.id, server, err)
    size = sum(part.stat().st_size for part in local_parts(path))  # every part of a split model
    # Raises ModelFilePackaged for the packaged default model, saying how to remove it.
    files.remove_cached(spec)
    out.write(f"removed {spec.id} ({format_bytes(size)}, {path})\n")


def _refuse_if_resident(model_id: str, server: ServerClient, err: TextIO) -> None:
    try:
        resident = resident_ids(server)
    except ServerUnreachable:
        return  # no server: nothing holds the file
    except LocalLabError as exc:
        err.write(
            f"note: could not ask the server at {server.base_url} whether it holds "
            f"{model_id} ({exc}); removing anyway\n"
        )
        return
    if model_id in resident:
        raise ModelInUse(
            f"model {model_id!r} is loaded on the server at {server.base_url}; unload it "
            f"first with `locallab-gguf stop {model_id}`, then remove it"
        )
