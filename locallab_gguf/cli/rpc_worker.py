"""locallab-gguf rpc-worker: this machine's devices, served to a locallab-gguf server elsewhere.

The server is ggml's own RPC server (llama.cpp's `rpc-server`), run in this process. Its
protocol has no authentication and no encryption: anyone who reaches the port can run
computations on the devices and read what they hold. So it listens on loopback unless told
otherwise, and a wider address needs --allow-network and is answered with a warning.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import psutil

from locallab_gguf.addresses import is_loopback
from locallab_gguf.engine.rpc.protocol import DEFAULT_PORT, PROTOCOL_VERSION, Endpoint, version_text
from locallab_gguf.errors import ConfigError
from locallab_gguf.placement.hardware import physical_cores
from locallab_gguf.sizes import human_bytes, parse_bytes

log = logging.getLogger(__name__)

NETWORK_WARNING = (
    "ggml's RPC protocol has no authentication and no encryption: whoever reaches {where} can "
    "run computations on this machine's devices and read the model data they hold. Serve it "
    "only on a private network, a WireGuard interface or an SSH tunnel, never the internet."
)
# How often the list of connected clients is looked at (ggml's server does not report them
# with their addresses).
CLIENT_POLL_S = 0.2


def add_rpc_worker_parser(commands: Any) -> None:
    worker = commands.add_parser(
        "rpc-worker",
        help="serve this machine's devices (CPU, GPUs) to a locallab-gguf server elsewhere",
        description="Runs llama.cpp's RPC server: a server started with `serve --rpc "
        "HOST:PORT` places model layers on the devices served here. Loopback only by default: "
        "the protocol has no authentication and no encryption. See docs/rpc.md.",
    )
    worker.add_argument("--host", default="127.0.0.1", help="address to listen on")
    worker.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    worker.add_argument(
        "--threads", type=int, help="CPU threads for the layers computed here (default: cores)"
    )
    worker.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="NAME",
        help="a device to serve, by llama.cpp's name (CPU, CUDA0, Metal...; repeatable); "
        "default: every GPU, else the CPU",
    )
    worker.add_argument(
        "--cache-dir",
        help="where tensors a server sent are kept, so a reload does not send the weights "
        "again (default: ~/.cache/locallab-gguf/rpc); 'none' keeps nothing",
    )
    worker.add_argument(
        "--memory",
        metavar="SIZE",
        help="the most each device offers (e.g. 6GiB): what it reports free, so servers plan "
        "no more layers on it (default: all the device has free)",
    )
    worker.add_argument(
        "--allow-network",
        action="store_true",
        help="listen on a non-loopback address (read the warning it prints)",
    )


def parse_size(text: str) -> int:
    size = parse_bytes(text)
    if size is None:
        raise ConfigError(f"--memory {text!r}: write a size such as 512MiB or 6GiB")
    return size


def check_address(host: str, allow_network: bool) -> str | None:
    """None for a loopback address; the warning to print for another one that is allowed;
    a ConfigError for one that is not."""
    if is_loopback(host):
        return None
    where = f"{host} (every interface)" if host in ("0.0.0.0", "::") else host
    if not allow_network:
        raise ConfigError(
            f"refusing to listen on {where} without --allow-network. "
            + NETWORK_WARNING.format(where="the port")
        )
    return NETWORK_WARNING.format(where=f"port on {where}")


def run_rpc_worker(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    warning = check_address(args.host, args.allow_network)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: the port must be 1-65535")
    endpoint = Endpoint(args.host, args.port)
    memory_cap = parse_size(args.memory) if args.memory else None
    threads = args.threads or physical_cores()
    cache_dir = _cache_dir(args.cache_dir)
    _check_port_free(endpoint)

    from locallab_gguf.engine.rpc.native import local_devices, serve_devices

    if warning:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    chosen = set(args.device)
    for device in local_devices():
        if chosen and device.name not in chosen:
            continue
        free, total = device.free_bytes, device.total_bytes
        if memory_cap is not None:
            free, total = min(free, memory_cap), min(total, memory_cap)
        print(
            f"device {device.name} ({device.kind}, {device.description}): "
            f"{human_bytes(free)} free of {human_bytes(total)}",
            file=out,
            flush=True,
        )

    def stop(signum: int, _frame: object) -> None:
        print(f"rpc-worker stopped ({signal.Signals(signum).name})", file=out, flush=True)
        # ggml's server thread never returns: the process ends without waiting for it.
        os._exit(0)

    # From here on Ctrl-C or a service manager's SIGTERM ends it at once, whatever it is doing.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(
        f"rpc-worker listening on {endpoint} (RPC protocol {version_text(PROTOCOL_VERSION)}, "
        f"{threads} threads, tensor cache {cache_dir or 'off'})",
        file=out,
        flush=True,
    )
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            serve_devices(
                endpoint,
                device_names=list(args.device),
                threads=threads,
                cache_dir=cache_dir,
                memory_cap_bytes=memory_cap,
            )
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    server = threading.Thread(target=serve, name="ggml-rpc-server", daemon=True)
    server.start()
    watcher = _ClientLog(endpoint.port, out)
    while server.is_alive():
        server.join(CLIENT_POLL_S)
        watcher.poll()
    if failure:
        raise failure[0]
    raise ConfigError(f"ggml's RPC server could not listen on {endpoint}")


def _cache_dir(setting: str | None) -> str | None:
    if setting is not None and setting.lower() == "none":
        return None
    folder = Path(setting) if setting else Path.home() / ".cache" / "locallab-gguf" / "rpc"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def _check_port_free(endpoint: Endpoint) -> None:
    """Say so plainly when the port is taken (ggml's server only prints that it failed)."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((endpoint.host, endpoint.port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {endpoint}: {exc.strerror or exc} (another rpc-worker?)"
            ) from None


class _ClientLog:
    """Logs each client that connects and leaves, from this process's open connections."""

    def __init__(self, port: int, out: TextIO) -> None:
        self._port = port
        self._out = out
        self._process = psutil.Process()
        self._clients: set[str] = set()

    def poll(self) -> None:
        try:
            connections = self._process.net_connections(kind="tcp")
        except psutil.Error:
            return
        now = {
            f"{conn.raddr.ip}:{conn.raddr.port}"
            for conn in connections
            if conn.laddr
            and conn.laddr.port == self._port
            and conn.raddr
            and conn.status == psutil.CONN_ESTABLISHED
        }
        stamp = time.strftime("%H:%M:%S")
        for client in sorted(now - self._clients):
            print(f"{stamp} client {client} connected", file=self._out, flush=True)
        for client in sorted(self._clients - now):
            print(f"{stamp} client {client} disconnected", file=self._out, flush=True)
        self._clients = now
