"""RPC workers for the tests: real `locallab-gguf rpc-worker` processes on loopback ports, and
a scripted stand-in that speaks only the handshake, as a worker of another protocol version
(which no build here can be) or a busy one would."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from locallab_gguf.engine.rpc.protocol import PROTOCOL_VERSION, Endpoint, probe
from locallab_gguf.errors import RpcWorkerUnavailable

MIB = 1024 * 1024
CLI = Path(sys.executable).parent / "locallab-gguf"


class WorkerProcess:
    """`locallab-gguf rpc-worker` on a loopback port, its devices capped at `memory`; it can be
    killed and started again on the same port (its output goes on in the same file)."""

    def __init__(self, port: int, memory: str, log: Path) -> None:
        self.port, self.memory, self.log = port, memory, log
        self.endpoint = Endpoint("127.0.0.1", port)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [
                    str(CLI),
                    "rpc-worker",
                    "--port",
                    str(self.port),
                    "--memory",
                    self.memory,
                    "--threads",
                    "2",
                    "--cache-dir",
                    "none",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.output()
            with contextlib.suppress(RpcWorkerUnavailable):
                probe(self.endpoint, timeout_s=1)
                return
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class ScriptedWorker:
    """A TCP server that answers the first commands of ggml-rpc as a worker of `version`
    with devices of the given (free, total) memory would; `silent` accepts and never answers
    (a worker busy with another client)."""

    def __init__(
        self,
        version: tuple[int, int, int] = PROTOCOL_VERSION,
        devices: tuple[tuple[int, int], ...] = ((512 * MIB, 1024 * MIB),),
        silent: bool = False,
    ) -> None:
        self.version, self.devices, self.silent = version, devices, silent
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = Endpoint("127.0.0.1", self.listener.getsockname()[1])
        self.commands: list[int] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                if self.silent:
                    conn.recv(1024)
                    threading.Event().wait(5)
                    continue
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        while True:
            head = _recv(conn, 9)
            if head is None:
                return
            command, size = head[0], struct.unpack("<Q", head[1:])[0]
            payload = _recv(conn, size) if size else b""
            self.commands.append(command)
            if command == 14:
                answer = struct.pack("<BBBx", *self.version) + bytes(24)
            elif command == 15:
                answer = struct.pack("<I", len(self.devices))
            elif command == 11:
                assert payload is not None
                (index,) = struct.unpack("<I", payload)
                answer = struct.pack("<QQ", *self.devices[index])
            else:
                return
            conn.sendall(struct.pack("<Q", len(answer)) + answer)

    def close(self) -> None:
        self.listener.close()


def _recv(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
