"""Starting the servers a benchmark measures: ours (`locallab-gguf serve`) and llama.cpp's
`llama-server`, each a subprocess on a free loopback port, set up alike and waited for."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

READY_SECONDS = 300  # a busy machine can take minutes to load a model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ours(port: int, threads: int, options: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`locallab-gguf serve` with `threads` for generation and prompts, no rate limit, quiet
    logs, and `options`; returns once its model is loaded."""
    command = [
        str(Path(sys.executable).parent / "locallab-gguf"),
        "serve",
        *("--port", str(port), "--threads", str(threads), "--threads-batch", str(threads)),
        *("--no-rate-limit", "--log-level", "warning"),
        *options,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    health = f"http://127.0.0.1:{port}/health"
    wait_ready(process, health, log, lambda reply: reply["model_status"] == "loaded")
    return process


def start_llama_server(
    binary: Path,
    port: int,
    threads: int,
    model_path: str,
    *,
    slots: int,
    slot_tokens: int,
    log: Path,
    options: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """llama.cpp's server set up like ours: `slots` slots of `slot_tokens` tokens, the same
    threads, flash attention, and `options`; returns once it answers /health."""
    command = [
        str(binary),
        *("--model", model_path, "--host", "127.0.0.1", "--port", str(port)),
        *("--threads", str(threads), "--threads-batch", str(threads)),
        *("--parallel", str(slots), "--ctx-size", str(slots * slot_tokens)),
        *("--flash-attn", "on", "--no-webui"),
        *options,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    wait_ready(process, f"http://127.0.0.1:{port}/health", log, lambda reply: True)
    return process


def wait_ready(
    process: subprocess.Popen[bytes], url: str, log: Path, ready: Callable[[Any], bool]
) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(url) as reply:
                if ready(json.load(reply)):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not become ready; its log: {log}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def default_model_path() -> str:
    """The bundled registry's default model file on this machine."""
    from locallab_gguf.models.files import ModelFiles
    from locallab_gguf.models.registry import default_models_file, load_registry

    registry = load_registry(default_models_file())
    return str(ModelFiles().resolve(registry.get(registry.default)))


def verdict(value: float, op: str, bound: float) -> str:
    """PASS when `value op bound` holds (op: ">=" or "<="), else FAIL."""
    if op not in (">=", "<="):
        raise ValueError(f"no such comparison: {op!r}")
    return "PASS" if (value >= bound if op == ">=" else value <= bound) else "FAIL"


def machine_record(threads: int) -> dict[str, Any]:
    """What a benchmark's JSON says of the machine it ran on."""
    import llama_cpp

    from locallab_gguf.placement.hardware import cpu_model, logical_cores

    return {
        "cpu": cpu_model(),
        "logical_cores": logical_cores(),
        "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__,
        "threads": threads,
        "load_average": os.getloadavg(),
    }
