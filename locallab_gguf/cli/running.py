"""`locallab-gguf ps` and `stop MODEL`: the models a running server holds, and unloading one.

`ps` reads the server's /api/ps (memory, context, expiry; whatever the server adds there
reaches `ps --json` unchanged); `stop` asks POST /models/unload, which needs an admin key
where the server has keys.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from typing import Any, TextIO

from locallab_gguf.cli.server_client import ServerClient
from locallab_gguf.errors import NotLoadedThere
from locallab_gguf.sizes import human_bytes

# /api/ps speaks Ollama's names: a registry id is shown as `id:latest`.
_OLLAMA_TAG = ":latest"
# /api/ps's expiry for a model that stays until unloaded (or is busy now).
_NEVER_YEAR = 2318


def resident_ids(client: ServerClient) -> list[str]:
    return [model_id_of(model["name"]) for model in client.get_json("/api/ps")["models"]]


def model_id_of(ollama_name: str) -> str:
    return ollama_name.removesuffix(_OLLAMA_TAG)


def ps(client: ServerClient, out: TextIO, *, as_json: bool = False) -> None:
    body = client.get_json("/api/ps")
    if as_json:
        out.write(json.dumps(body) + "\n")
        return
    models: list[dict[str, Any]] = body["models"]
    if not models:
        out.write(f"No model is loaded on the server at {client.base_url}.\n")
        return
    table = [("ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")]
    now = time.time()
    for model in models:
        table.append(
            (
                model_id_of(model["name"]),
                human_bytes(model["size"]),
                processor(model["size"], model["size_vram"]),
                f"{model['context_length']:,}",
                until(model["expires_at"], now),
            )
        )
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    for row in table:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        out.write("\n")


def processor(size: int, size_vram: int) -> str:
    """Where the model's memory is, as Ollama's `ps` says it: 100% CPU, 30%/70% CPU/GPU."""
    if size <= 0 or size_vram <= 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    gpu = round(100 * size_vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


def until(expires_at: str, now: float) -> str:
    """When the server unloads the model if it stays idle."""
    try:
        expires = datetime.fromisoformat(expires_at)
    except ValueError:
        return expires_at
    if expires.year >= _NEVER_YEAR:
        return "until unloaded"
    seconds = expires.timestamp() - now
    if seconds <= 0:
        return "now"
    return "in " + _duration(seconds)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{math.ceil(seconds)} s"
    if seconds < 3600:
        return f"{math.ceil(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def stop(client: ServerClient, model_id: str, err: TextIO) -> None:
    answer = client.post_json("/models/unload", {"model_id": model_id})
    if answer.get("model_id") is None:
        raise NotLoadedThere(
            f"model {model_id!r} is not loaded on the server at {client.base_url}; "
            "`locallab-gguf ps` lists the models it holds"
        )
    err.write(f"{answer['message']}\n")
