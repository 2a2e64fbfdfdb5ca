"""The first messages of ggml-rpc's protocol, spoken from Python: handshake, devices, memory.

llama.cpp's own client aborts the whole process when a worker cannot be reached or answers
with another protocol version (GGML_ABORT in ggml-rpc.cpp), so everything that can be known
before a load is asked here first, with timeouts, and turned into an error that names the
worker. The frames (ggml/src/ggml-rpc/ggml-rpc.cpp, all little-endian and packed):

    request:  | command (1 byte) | payload size (u64) | payload |
    response: | payload size (u64) | payload |

The first command on a connection must be HELLO (its number is fixed at 14 for every
version); its answer carries the worker's major.minor.patch version. A worker serves one
client at a time and queues the others in accept(), so a worker that accepts a connection but
does not answer the handshake in time is busy with another client (or not a ggml-rpc server).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import msgspec

from locallab_gguf.errors import ConfigError, RpcProtocolMismatch, RpcWorkerUnavailable

# ggml/include/ggml-rpc.h of the llama.cpp inside the pinned llama-cpp-python (0.3.36):
# RPC_PROTO_MAJOR/MINOR/PATCH_VERSION. A worker is compatible when its major version is the
# same and its minor version is not newer (the rule llama.cpp's client applies).
PROTOCOL_VERSION = (7, 0, 0)
DEFAULT_PORT = 50052

_HELLO = 14
_DEVICE_COUNT = 15
_GET_DEVICE_MEMORY = 11
_CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE: transport capabilities; all zero asks for plain TCP
_HELLO_ANSWER = struct.Struct("<BBBx24s")
_COUNT = struct.Struct("<I")
_MEMORY = struct.Struct("<QQ")
_SIZE = struct.Struct("<Q")

# How long a worker may take to accept and answer the handshake before it counts as
# unreachable or busy.
PROBE_TIMEOUT_S = 3.0


class Endpoint(msgspec.Struct, frozen=True):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """`host:port` (an IPv6 host in brackets), or a bare host on the default port."""
    text = text.strip()
    host, port_text = text, str(DEFAULT_PORT)
    if text.startswith("["):
        closing = text.find("]")
        if closing < 0:
            raise ConfigError(f"RPC worker {text!r}: an IPv6 address needs its closing ']'")
        host, rest = text[1:closing], text[closing + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"RPC worker {text!r}: expected ':port' after the address")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise ConfigError(f"RPC worker {text!r}: no host (write host:port)")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"RPC worker {text!r}: the port is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"RPC worker {text!r}: the port must be 1-65535")
    return Endpoint(host, port)


def parse_endpoints(items: list[str]) -> list[Endpoint]:
    """Endpoints from flags and files, each item possibly a comma-separated list; a worker
    named twice is one worker."""
    endpoints: list[Endpoint] = []
    for item in items:
        for part in item.split(","):
            if part.strip():
                endpoint = parse_endpoint(part)
                if endpoint not in endpoints:
                    endpoints.append(endpoint)
    return endpoints


class DeviceMemory(msgspec.Struct, frozen=True):
    free_bytes: int
    total_bytes: int


class WorkerFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker said of itself: its protocol version and each device's memory."""

    endpoint: str
    version: tuple[int, int, int]
    devices: list[DeviceMemory]

    @property
    def free_bytes(self) -> int:
        return sum(device.free_bytes for device in self.devices)


def version_text(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def compatible(version: tuple[int, int, int]) -> bool:
    return version[0] == PROTOCOL_VERSION[0] and version[1] <= PROTOCOL_VERSION[1]


def probe(endpoint: Endpoint, timeout_s: float = PROBE_TIMEOUT_S) -> WorkerFacts:
    """Connect, shake hands and ask each device's memory; raise an error naming the worker
    when it cannot be reached, does not answer in time, or speaks another version."""
    name = str(endpoint)
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s)
    except OSError as exc:
        raise RpcWorkerUnavailable(
            f"RPC worker {name} cannot be reached ({_reason(exc)}); start it there with "
            f"`locallab-gguf rpc-worker --port {endpoint.port}`, or take it out of --rpc or the "
            "model's rpc list"
        ) from None
    with contextlib.closing(sock):
        try:
            answer = _exchange(sock, deadline, _HELLO, bytes(_CAPS_SIZE), _HELLO_ANSWER.size)
            major, minor, patch, _caps = _HELLO_ANSWER.unpack(answer)
            version = (major, minor, patch)
            if not compatible(version):
                raise RpcProtocolMismatch(
                    f"RPC worker {name} speaks RPC protocol {version_text(version)}, but this "
                    f"server's llama.cpp speaks {version_text(PROTOCOL_VERSION)}: run the same "
                    "locallab-gguf (the same llama-cpp-python) on both machines"
                )
            (count,) = _COUNT.unpack(_exchange(sock, deadline, _DEVICE_COUNT, b"", _COUNT.size))
            devices = []
            for index in range(count):
                free, total = _MEMORY.unpack(
                    _exchange(sock, deadline, _GET_DEVICE_MEMORY, _COUNT.pack(index), _MEMORY.size)
                )
                devices.append(DeviceMemory(free, total))
        except _Unexpected as exc:
            raise RpcProtocolMismatch(
                f"RPC worker {name} is not a compatible ggml-rpc server ({exc}); this server's "
                f"llama.cpp speaks RPC protocol {version_text(PROTOCOL_VERSION)}"
            ) from None
        except TimeoutError:
            raise RpcWorkerUnavailable(
                f"RPC worker {name} accepted the connection but did not answer within "
                f"{timeout_s:g} s: it serves one client at a time, so another server or model "
                "may be using it"
            ) from None
        except OSError as exc:
            raise RpcWorkerUnavailable(
                f"RPC worker {name} broke off the handshake ({_reason(exc)}); it may speak "
                f"another RPC protocol than this server's {version_text(PROTOCOL_VERSION)}"
            ) from None
    return WorkerFacts(endpoint=name, version=version, devices=devices)


def wait_for(endpoint: Endpoint, wait_s: float, timeout_s: float = PROBE_TIMEOUT_S) -> WorkerFacts:
    """Probe until the worker answers or `wait_s` has passed (a worker being restarted);
    a version mismatch is final at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return probe(endpoint, timeout_s)
        except RpcProtocolMismatch:
            raise
        except RpcWorkerUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                if wait_s > 0:
                    raise RpcWorkerUnavailable(f"{exc} (waited {wait_s:g} s)") from None
                raise
            time.sleep(min(0.5, left))


class _Unexpected(Exception):
    pass


def _exchange(
    sock: socket.socket, deadline: float, command: int, payload: bytes, answer_size: int
) -> bytes:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    sock.sendall(bytes([command]) + _SIZE.pack(len(payload)) + payload)
    (size,) = _SIZE.unpack(_receive(sock, _SIZE.size))
    if size != answer_size:
        raise _Unexpected(f"it answered command {command} with {size} bytes, not {answer_size}")
    return _receive(sock, size)


def _receive(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionResetError("the worker closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
