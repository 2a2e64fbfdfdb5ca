"""Long prompts and shared prompts against llama.cpp's own server, measured in one run.

    .venv/bin/python benchmarks/prompts.py [--runs 3] [--threads 2] [--llama-server PATH]
        [--deterministic] [--document-tokens 3100] [--system-tokens 1550] [--requests 24]
        [--conversations 16] [--turns 4] [--workloads NAME ...] [--json PATH]

Starts `locallab-gguf serve` (8 slots of 4,096 tokens, the default full-speed mode) and, with
--llama-server, llama.cpp's `llama-server` set up alike (-np 8, 4,096 tokens a slot, flash
attention), and with --deterministic a third server in that mode (its figures are printed
beside, with no target). Every workload streams /v1/chat/completions greedily from each
server in turn, run after run (interleaved), so drift on a shared machine hits all alike:

- long document: one client, a document of --document-tokens + "Summarize", 16 new tokens;
  time to first token;
- shared system prompt: 8 clients send --requests requests in all, each a system prompt of
  --system-tokens and a distinct short question, 24 new tokens; wall time, first token p95;
- conversations: --conversations chats of --turns turns over 8 clients (each turn adds about
  85 user tokens, 32 new tokens); first token p50 of the turns after the first;
- short prompts: benchmarks/throughput.py's 1 and 8 streaming clients, 128 new tokens.

Each run's texts begin with the run's number, so no run starts from another's cache. Prints
the medians with the targets (ratios to llama-server's in the same run) and writes all runs
as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import throughput
from launch import (
    default_model_path,
    free_port,
    percentile,
    start_llama_server,
    start_ours,
    verdict,
)
from throughput import PEER, stream

ROOT = Path(__file__).resolve().parent.parent
SLOT_TOKENS = 4096
OURS = "ours"
MODEL_ID = "smollm2-135m-instruct"
DETERMINISTIC = "ours_deterministic"
WORDS = [
    "river",
    "harbour",
    "ledger",
    "barge",
    "timber",
    "wool",
    "apple",
    "cider",
    "grain",
    "keeper",
    "lantern",
    "bridge",
    "market",
    "mill",
    "weaver",
    "smith",
    "orchard",
    "meadow",
    "tide",
    "sail",
    "anchor",
    "rope",
    "cargo",
    "merchant",
    "clerk",
    "tax",
    "toll",
    "winter",
    "spring",
    "autumn",
    "summer",
    "flood",
    "drought",
    "festival",
    "council",
    "charter",
    "road",
    "inn",
    "stable",
]


def text_of(tokens: int, seed: int) -> str:
    """Plain sentences of about `tokens` tokens (SmolLM2's tokenizer: about 1.3 a word)."""
    words = []
    state = seed * 7919 + 17
    while len(words) * 1.3 < tokens:
        sentence = []
        for _ in range(12):
            state = (state * 1103515245 + 12345) % 2**31
            sentence.append(WORDS[state % len(WORDS)])
        words.extend(sentence)
        words[-1] += "."
    return " ".join(words)


def start_server(
    port: int, threads: int, deterministic: bool, log: Path
) -> subprocess.Popen[bytes]:
    options = ["--parallel", "8", "--ctx", str(SLOT_TOKENS)]
    return start_ours(port, threads, options + (["--deterministic"] if deterministic else []), log)


async def chat(
    port: int, messages: list[dict[str, str]], max_tokens: int
) -> throughput.StreamTiming:
    body = {
        "model": MODEL_ID,  # llama-server serves one model whatever the name
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    return await stream(port, "/v1/chat/completions", body)


async def long_document(port: int, run: int, tokens: int) -> dict[str, float]:
    document = f"Document {run}. " + text_of(tokens, seed=run)
    timing = await chat(port, [{"role": "user", "content": document + "\n\nSummarize."}], 16)
    return {"ttft_s": timing.ttft}


async def shared_system(port: int, run: int, tokens: int, requests: int) -> dict[str, Any]:
    system = f"Instructions {run}. " + text_of(tokens, seed=1000 + run)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    ttfts: list[float] = []

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            question = f"Question {i}: which word of the instructions comes up most often?"
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ]
            ttfts.append((await chat(port, messages, 24)).ttft)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(8)))
    return {
        "wall_s": time.perf_counter() - started,
        "ttft_p50_s": percentile(ttfts, 0.5),
        "ttft_p95_s": percentile(ttfts, 0.95),
    }


async def conversations(port: int, run: int, count: int, turns: int) -> dict[str, Any]:
    """Client c owns conversations c, c + 8, ... and takes their turns in rotation, so slots
    are shared among more conversations than there are slots."""
    later: list[float] = []
    first: list[float] = []

    async def client(owned: list[int]) -> None:
        histories: dict[int, list[dict[str, str]]] = {
            c: [{"role": "system", "content": f"Run {run}, chat {c}: a patient tutor."}]
            for c in owned
        }
        for turn in range(turns):
            for c in owned:
                history = histories[c]
                history.append(
                    {"role": "user", "content": text_of(65, seed=run * 97 + c * 13 + turn)}
                )
                timing = await chat(port, history, 32)
                (first if turn == 0 else later).append(timing.ttft)
                history.append({"role": "assistant", "content": text_of(24, seed=turn + c)})

    owners = [[c for c in range(count) if c % 8 == client] for client in range(8)]
    await asyncio.gather(*(client(owned) for owned in owners if owned))
    return {
        "first_turn_ttft_p50_s": percentile(first, 0.5),
        "later_turns_ttft_p50_s": percentile(later, 0.5),
    }


async def short_prompts(port: int, server: str, run: int) -> dict[str, float]:
    kind = PEER if server == PEER else "process"
    single = await throughput.one_client(port, kind)
    prompts = throughput.PROMPT_SETS[run % len(throughput.PROMPT_SETS)]
    eight = await throughput.eight_clients(port, prompts, kind)
    return {
        "one_client_tokens_per_s": single["tokens_per_s"],
        "eight_clients_tokens_per_s": eight["aggregate_tokens_per_s"],
    }


WORKLOADS = ("long_document", "shared_system", "conversations", "short_prompts")


def measure(ports: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    chosen = args.workloads
    results: dict[str, Any] = {server: {w: [] for w in WORKLOADS} for server in ports}
    for run in range(args.runs):
        for server, port in ports.items():
            if "long_document" not in chosen:
                break
            doc = asyncio.run(long_document(port, run, args.document_tokens))
            results[server]["long_document"].append(doc)
            print(f"run {run} {server} long document {doc}", flush=True)
        for server, port in ports.items():
            if "shared_system" not in chosen:
                break
            shared = asyncio.run(shared_system(port, run, args.system_tokens, args.requests))
            results[server]["shared_system"].append(shared)
            print(f"run {run} {server} shared system prompt {shared}", flush=True)
        for server, port in ports.items():
            if "conversations" not in chosen:
                break
            chats = asyncio.run(conversations(port, run, args.conversations, args.turns))
            results[server]["conversations"].append(chats)
            print(f"run {run} {server} conversations {chats}", flush=True)
        for server, port in ports.items():
            if "short_prompts" not in chosen:
                break
            short = asyncio.run(short_prompts(port, server, run))
            results[server]["short_prompts"].append(short)
            print(f"run {run} {server} short prompts {short}", flush=True)
    return results


FIGURES = [
    # (workload, key, name, better, target as a ratio to llama-server's)
    ("long_document", "ttft_s", "long document, first token (s)", "lower", 0.9),
    ("shared_system", "wall_s", "shared system prompt, wall time (s)", "lower", 0.3),
    ("shared_system", "ttft_p95_s", "shared system prompt, first token p95 (s)", "lower", 0.2),
    (
        "conversations",
        "later_turns_ttft_p50_s",
        "conversations, turns 2+ first token p50 (s)",
        "lower",
        0.5,
    ),
    ("short_prompts", "one_client_tokens_per_s", "short prompts, 1 client tokens/s", "higher", 1.0),
    (
        "short_prompts",
        "eight_clients_tokens_per_s",
        "short prompts, 8 clients tokens/s",
        "higher",
        1.0,
    ),
]


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    def values(server: str, workload: str, key: str) -> list[float]:
        return [row[key] for row in results[server][workload]]

    table = []
    header = f"{'figure':46} {'ours':>9} {'spread':>15} {'llama-server':>12} {'ratio':>6}"
    header += f" {'target':>8}  verdict"
    if DETERMINISTIC in results:
        header += f"  {'deterministic':>13}"
    print(header)
    for workload, key, name, better, target in FIGURES:
        ours = values(OURS, workload, key)
        if not ours:
            continue
        row: dict[str, Any] = {
            "figure": name,
            "ours_median": statistics.median(ours),
            "ours_min": min(ours),
            "ours_max": max(ours),
        }
        line = f"{name:46} {row['ours_median']:9.2f} {min(ours):7.2f}-{max(ours):<7.2f}"
        if PEER in results:
            peer = statistics.median(values(PEER, workload, key))
            ratio = row["ours_median"] / peer
            sign = "<=" if better == "lower" else ">="
            row.update(
                peer_median=peer,
                ratio=ratio,
                target=f"{sign} {target}",
                verdict=verdict(ratio, sign, target),
            )
            line += f" {peer:12.2f} {ratio:6.2f} {row['target']:>8}  {row['verdict']}"
        else:
            line += f" {'':12} {'':6} {'':8}"
        if DETERMINISTIC in results:
            row["deterministic_median"] = statistics.median(values(DETERMINISTIC, workload, key))
            line += f"  {row['deterministic_median']:13.2f}"
        print(line)
        table.append(row)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/prompts.json")
    parser.add_argument("--llama-server", type=Path, metavar="PATH")
    parser.add_argument("--deterministic", action="store_true", help="also measure that mode")
    parser.add_argument("--document-tokens", type=int, default=3100)
    parser.add_argument("--system-tokens", type=int, default=1550)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument(
        "--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS), metavar="NAME"
    )
    args = parser.parse_args()

    model_path = default_model_path()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    servers: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    load_before = os.getloadavg()
    try:
        ports[OURS] = free_port()
        servers[OURS] = start_server(
            ports[OURS], args.threads, False, args.json.with_suffix(".ours.log")
        )
        if args.llama_server is not None:
            ports[PEER] = free_port()
            log = args.json.with_suffix(f".{PEER}.log")
            servers[PEER] = start_llama_server(
                args.llama_server,
                ports[PEER],
                args.threads,
                model_path,
                slots=8,
                slot_tokens=SLOT_TOKENS,
                log=log,
            )
        if args.deterministic:
            ports[DETERMINISTIC] = free_port()
            log = args.json.with_suffix(".deterministic.log")
            servers[DETERMINISTIC] = start_server(ports[DETERMINISTIC], args.threads, True, log)
        results = measure(ports, args)
    finally:
        for server in servers.values():
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
    table = summarize(results)

    import llama_cpp

    from locallab_gguf.placement.hardware import cpu_model, logical_cores

    report = {
        "machine": {
            "cpu": cpu_model(),
            "logical_cores": logical_cores(),
            "python": platform.python_version(),
            "llama_cpp_python": llama_cpp.__version__,
            "threads": args.threads,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {k: str(v) for k, v in vars(args).items()},
        "table": table,
        "runs": results,
    }
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
