"""`locallab-gguf serve` as a subprocess on a free port, for tests where the server's own
configuration matters (its HTTP protocol, its logging, its file-descriptor limit)."""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.conftest import TEST_SETTINGS
from tests.support.servers import free_port

CLI = Path(sys.executable).parent / "locallab-gguf"


class Served:
    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        return sock

    def wait_for_log(self, condition: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not condition(output := self.output()):
            assert time.monotonic() < deadline, output[-3000:]
            time.sleep(0.05)
        return output


@contextlib.contextmanager
def serve(tmp_path: Path, *flags: str, open_files: int | None = None) -> Iterator[Served]:
    """A server with a small context and two slots (later flags win), its output in a file
    under `tmp_path`; `open_files` limits its file descriptors."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"

    def limit_open_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                str(CLI),
                "serve",
                "--port",
                str(port),
                "--threads",
                "2",
                "--ctx",
                "256",
                "--parallel",
                "2",
                "--no-rate-limit",
                "--draft-cost",  # given, not timed: as conftest.TEST_SETTINGS says
                str(TEST_SETTINGS.draft_cost),
                *flags,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_open_files,
        )
    served = Served(port, process, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, served.output()
            with contextlib.suppress(httpx.TransportError, ValueError):
                health = httpx.get(f"{served.url}/health", timeout=5).json()
                if health["model_status"] == "loaded":
                    break
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
