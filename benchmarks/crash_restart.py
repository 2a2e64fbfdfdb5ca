"""How long a crash of the engine worker interrupts the streams in flight.

    .venv/bin/python benchmarks/crash_restart.py [--kills 5] [--threads 2] [--clients 4]
        [--tokens 128]

Starts `locallab-gguf serve` as a subprocess with the default model. Each round, --clients
clients stream /generate (greedy, --tokens new tokens); once every one has text, the engine worker
is killed with SIGSEGV. Measured per kill: the restart (kill -> /health says the model is
loaded again, by a new worker) and the pause each stream sees (kill -> its next text). Every
stream must end with [DONE] and no error. Prints the medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from launch import free_port  # noqa: E402
from throughput import start_server  # noqa: E402

PROMPTS = [
    "Once upon a time",
    "The history of the Roman Empire",
    "Write a recipe for bread:\n",
    "The best way to learn programming is",
    "In the year 2050,",
    "Dear diary, today I",
    "Here is a list of fruits:",
    "The ocean is",
]


class Client(threading.Thread):
    def __init__(self, url: str, prompt: str, tokens: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.prompt = prompt
        self.tokens = tokens
        self.times: list[float] = []  # when each text event arrived
        self.last = ""
        self.start()

    def run(self) -> None:
        body = {"prompt": self.prompt, "max_length": self.tokens, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{self.url}/generate", json=body, timeout=600) as reply:
            for line in reply.iter_lines():
                if line.startswith("data:"):
                    self.last = line
                    if not line.startswith(("data: [DONE]", "data: [ERROR]")):
                        self.times.append(time.monotonic())


def worker_of(server: subprocess.Popen[bytes]) -> int:
    children = psutil.Process(server.pid).children()
    workers = [
        c.pid for c in children if "locallab_gguf.engine.worker.worker" in " ".join(c.cmdline())
    ]
    assert len(workers) == 1, workers
    return workers[0]


def one_kill(
    url: str, server: subprocess.Popen[bytes], clients: int, tokens: int, round_: int
) -> dict[str, float]:
    prompts = [PROMPTS[(round_ + i) % len(PROMPTS)] for i in range(clients)]
    streams = [Client(url, prompt, tokens) for prompt in prompts]
    while not all(len(s.times) >= 2 for s in streams):
        time.sleep(0.01)
    worker = worker_of(server)
    killed = time.monotonic()
    os.kill(worker, signal.SIGSEGV)
    noticed = False  # until the server has seen the death, /health still says "loaded"
    while True:
        status = httpx.get(f"{url}/health", timeout=5).json()["model_status"]
        noticed = noticed or status == "restarting"
        if noticed and status == "loaded":
            restart = time.monotonic() - killed
            break
        time.sleep(0.01)
    for stream in streams:
        stream.join(timeout=600)
    for stream in streams:
        assert stream.last == "data: [DONE]", stream.last
    pauses = [min(t for t in s.times if t > killed) - killed for s in streams]
    return {"restart": restart, "pause": statistics.median(pauses)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    port = free_port()
    log = Path("/tmp") / f"crash-restart-{port}.log"
    server = start_server(port, args.threads, "process", log)
    url = f"http://127.0.0.1:{port}"
    try:
        rows = []
        for round_ in range(args.kills):
            row = one_kill(url, server, args.clients, args.tokens, round_)
            print(f"kill {round_ + 1}: restart {row['restart']:.2f} s, pause {row['pause']:.2f} s")
            rows.append(row)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    restart = statistics.median(row["restart"] for row in rows)
    pause = statistics.median(row["pause"] for row in rows)
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}: "
        f"median restart {restart:.2f} s, median pause of a stream {pause:.2f} s "
        f"over {len(rows)} kills"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
