"""Generation speed through HTTP against a bare llama-cpp-python loop, measured in one run.

    .venv/bin/python benchmarks/throughput.py [--runs 3] [--threads 2] [--json PATH]
        [--llama-server PATH]

Starts `locallab-gguf serve` as a subprocess with the default model and measures, each as the
median of --runs runs (greedy, 128 new tokens):

- the bare loop: llama-cpp-python's low-level API, one sequence, decode + sample + detokenize;
- 1 client streaming /generate: tokens/s and time to first token;
- 8 concurrent clients streaming /generate: aggregate tokens/s and time to first token;
- a chat of about 1,000 tokens: time to first token of its next turn against its first;
- the same 1- and 8-client runs against a second server whose engine runs in-process, to
  price the worker process (its pipe and the extra hop for every step's events);
- with --llama-server, the same 1- and 8-client runs against llama.cpp's own C++ server
  (`/completion`, 8 slots, the same model, threads and context), the peer to beat.

Prints a table with the targets and writes everything, runs included, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launch import (
    default_model_path,
    free_port,
    machine_record,
    percentile,
    start_llama_server,
    start_ours,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
NEW_TOKENS = 128
SLOT_TOKENS = 2048
# Prompts whose greedy continuation runs past 128 tokens with the default model. Slots keep
# their cache and a repeated prompt would start from it, so each run's 8 clients get the next
# set: when a set comes round again, two others have since taken every slot.
PROMPT_SETS = [
    [
        "Once upon a time",
        "The history of the Roman Empire",
        "Write a recipe for bread:\n",
        "The best way to learn programming is",
        "In the year 2050,",
        "Dear diary, today I",
        "Here is a list of fruits:",
        "Les élèves français aiment",
    ],
    [
        "The ocean is",
        "My grandmother told me",
        "The first rule of cooking is",
        "A short guide to gardening:\n",
        "Why do cats",
        "The museum was",
        "Scientists have discovered",
        "The recipe calls for",
    ],
    [
        "When I was young,",
        "The city at night",
        "An introduction to chess:\n",
        "The mountain village",
        "Breaking news:",
        "The old lighthouse",
        "Every morning, the baker",
        "Ten tips for better sleep:\n",
    ],
]
PROMPTS = PROMPT_SETS[0]
ALONE = "The teacher asked"  # the single stream's prompt, in no set above
TOPICS = ["rivers", "mountains", "deserts", "forests", "oceans", "cities", "islands", "glaciers"]


class StreamTiming:
    def __init__(self, started: float, first: float | None, ended: float, events: int) -> None:
        self.started = started
        self.first = first
        self.ended = ended
        self.events = events

    @property
    def ttft(self) -> float:
        assert self.first is not None, "the stream sent no text"
        return self.first - self.started

    @property
    def total(self) -> float:
        return self.ended - self.started


def carries_text(event: bytes) -> bool:
    """/generate events are text; chat events are JSON chunks, the first only naming the role
    (llama-server's and OpenAI's with an empty content); llama-server's /completion events are
    JSON with the text in `content`."""
    if not event.startswith(b"data: {"):
        return True
    if b'"content"' not in event:
        return False
    chunk = json.loads(event[len(b"data: ") :])
    if "choices" not in chunk:  # llama-server's /completion: the text is `content`
        return bool(chunk.get("content"))
    choices = chunk["choices"] or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


async def stream(port: int, path: str, body: dict[str, Any]) -> StreamTiming:
    """A minimal HTTP/1.1 client: the client's own cost stays out of the server's figures."""
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"{path} answered {status!r}: {await reader.read()!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    first: float | None = None
    events = 0
    pending = b""
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            break
        pending += await reader.readexactly(size)
        await reader.readline()
        *complete, pending = pending.split(b"\n\n")
        for event in complete:
            if event == b"data: [DONE]" or not carries_text(event):
                continue
            if first is None:
                first = time.perf_counter()
            events += 1
    ended = time.perf_counter()
    writer.close()
    return StreamTiming(started, first, ended, events)


def bare_loop(model_path: str, threads: int, prompts: list[str]) -> tuple[float, float]:
    """(tokens/s, time to first token) of greedy sequences on llama.cpp's C API, no server.

    One prompt is the single-sequence baseline. Several decode in lockstep, one token each
    per llama_decode, each in its own KV region: what llama.cpp itself can do for that many
    streams on this machine, the ceiling for the server's aggregate.
    """
    import llama_cpp as lc

    silence = lc.llama_log_callback(lambda *_: None)
    lc.llama_log_set(silence, ctypes.c_void_p())
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(model_path.encode(), lc.llama_model_default_params())
    vocab = lc.llama_model_get_vocab(model)
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 2048 * len(prompts), 512, 512
    params.n_seq_max, params.kv_unified = len(prompts), False
    params.n_threads = params.n_threads_batch = threads
    context = lc.llama_init_from_model(model, params)
    samplers = []
    for _ in prompts:
        sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(sampler, lc.llama_sampler_init_greedy())
        samplers.append(sampler)
    batch = lc.llama_batch_init(512, 0, 1)
    piece = ctypes.create_string_buffer(256)

    def put(index: int, token: int, position: int, seq: int, logits: bool) -> None:
        batch.token[index], batch.pos[index] = token, position
        batch.n_seq_id[index], batch.logits[index] = 1, logits
        batch.seq_id[index][0] = seq

    started = time.perf_counter()
    n = 0
    indices, positions = [], []
    for seq, prompt in enumerate(prompts):
        data = prompt.encode()
        tokens = (lc.llama_token * (len(data) + 8))()
        count = lc.llama_tokenize(vocab, data, len(data), tokens, len(data) + 8, True, True)
        for i in range(count):
            put(n, tokens[i], i, seq, i == count - 1)
            n += 1
        indices.append(n - 1)
        positions.append(count)
    batch.n_tokens = n
    assert lc.llama_decode(context, batch) == 0
    texts = [b""] * len(prompts)
    first = 0.0
    for step in range(NEW_TOKENS):
        for seq, sampler in enumerate(samplers):
            token = lc.llama_sampler_sample(sampler, context, indices[seq])
            size = lc.llama_token_to_piece(vocab, token, piece, len(piece), 0, False)
            texts[seq] += piece.raw[:size]
            put(seq, token, positions[seq], seq, True)
            indices[seq] = seq
            positions[seq] += 1
        if step == 0:
            first = time.perf_counter() - started
        batch.n_tokens = len(prompts)
        assert lc.llama_decode(context, batch) == 0
    elapsed = time.perf_counter() - started
    lc.llama_batch_free(batch)
    for sampler in samplers:
        lc.llama_sampler_free(sampler)
    lc.llama_free(context)
    lc.llama_model_free(model)
    return NEW_TOKENS * len(prompts) / elapsed, first


def conversation(topic: str) -> list[dict[str, str]]:
    """About 1,000 tokens of chat history, unique per topic so runs do not share a cache."""
    turns: list[dict[str, str]] = [
        {"role": "system", "content": f"You are a patient geography tutor who loves {topic}."}
    ]
    for i in range(8):
        turns.append({"role": "user", "content": f"Tell me fact number {i + 1} about {topic}."})
        turns.append(
            {
                "role": "assistant",
                "content": (
                    f"Fact {i + 1}: {topic.capitalize()} shape the land and the lives of the "
                    "people near them. They change slowly over centuries, carry water and "
                    "sediment, support plants and animals, and have guided where towns, roads "
                    "and farms were built. Scientists measure them with satellites, field "
                    "surveys and old maps, and each new measurement adds detail to a long story "
                    "of climate, trade and settlement that began long before written records."
                ),
            }
        )
    turns.append({"role": "user", "content": f"Summarise what we said about {topic}."})
    return turns


def start_server(port: int, threads: int, isolation: str, log: Path) -> subprocess.Popen[bytes]:
    options = ["--parallel", "8", "--ctx", str(SLOT_TOKENS), "--engine-isolation", isolation]
    return start_ours(port, threads, options, log)


GREEDY = {"max_length": NEW_TOKENS, "temperature": 0, "stream": True}
# llama.cpp's server stops at the end-of-generation token unless told not to; the prompts run
# past 128 tokens with this model anyway, so both servers produce the same count.
PEER_GREEDY = {"n_predict": NEW_TOKENS, "temperature": 0, "stream": True, "ignore_eos": True}
PEER = "llama_server"


def request_for(server: str, prompt: str) -> tuple[str, dict[str, Any]]:
    if server == PEER:
        return "/completion", {**PEER_GREEDY, "prompt": prompt}
    return "/generate", {**GREEDY, "prompt": prompt}


async def one_client(port: int, server: str = "process") -> dict[str, float]:
    timing = await stream(port, *request_for(server, ALONE))
    return {
        "tokens_per_s": NEW_TOKENS / timing.total,
        "ttft_s": timing.ttft,
        "total_s": timing.total,
    }


async def eight_clients(port: int, prompts: list[str], server: str = "process") -> dict[str, Any]:
    timings = await asyncio.gather(*(stream(port, *request_for(server, p)) for p in prompts))
    span = max(t.ended for t in timings) - min(t.started for t in timings)
    ttfts = [t.ttft for t in timings]
    return {
        "aggregate_tokens_per_s": len(prompts) * NEW_TOKENS / span,
        "ttft_p50_s": percentile(ttfts, 0.5),
        "ttft_p95_s": percentile(ttfts, 0.95),
        "ttfts_s": ttfts,
    }


async def chat_next_turn(port: int, run: int) -> dict[str, float]:
    history = conversation(TOPICS[run % len(TOPICS)])
    body = {"max_length": 32, "temperature": 0, "stream": True}
    first = await stream(port, "/chat", {**body, "messages": history})
    next_turn = [
        *history,
        {"role": "assistant", "content": "They are old, slow and important."},
        {"role": "user", "content": "And which fact surprised you most?"},
    ]
    second = await stream(port, "/chat", {**body, "messages": next_turn})
    return {
        "first_turn_ttft_s": first.ttft,
        "next_turn_ttft_s": second.ttft,
        "ratio": second.ttft / first.ttft,
    }


def measure(model_path: str, threads: int, ports: dict[str, int], runs: int) -> dict[str, Any]:
    """Every measurement of a run back to back, so slow drift on a shared machine hits all."""
    results: dict[str, Any] = {"bare_loop": [], "bare_loop_8": [], "chat": []}
    for server in ports:
        results[server] = {"single": [], "concurrent": []}
    warm_up = [f"Warm-up request {i}:" for i in range(len(PROMPTS))]
    for server, port in ports.items():  # every slot has decoded once, as in steady use
        asyncio.run(one_client(port, server))
        asyncio.run(eight_clients(port, warm_up, server))
    for run in range(runs):
        tps, ttft = bare_loop(model_path, threads, [ALONE])
        results["bare_loop"].append({"tokens_per_s": tps, "ttft_s": ttft})
        tps, ttft = bare_loop(model_path, threads, PROMPTS)
        results["bare_loop_8"].append({"tokens_per_s": tps, "ttft_s": ttft})
        for server, port in ports.items():
            results[server]["single"].append(asyncio.run(one_client(port, server)))
        prompts = PROMPT_SETS[run % len(PROMPT_SETS)]
        for server, port in ports.items():
            results[server]["concurrent"].append(asyncio.run(eight_clients(port, prompts, server)))
        results["chat"].append(asyncio.run(chat_next_turn(ports["process"], run)))
    return results


def median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(row[key] for row in rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/throughput.json")
    parser.add_argument(
        "--llama-server",
        type=Path,
        metavar="PATH",
        help="also measure this llama.cpp llama-server binary with the same clients",
    )
    args = parser.parse_args()

    model_path = default_model_path()

    args.json.parent.mkdir(parents=True, exist_ok=True)
    servers = {}
    ports = {}
    try:
        for isolation in ("process", "thread"):
            ports[isolation] = free_port()
            log = args.json.with_suffix(f".{isolation}.log")
            servers[isolation] = start_server(ports[isolation], args.threads, isolation, log)
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
        measured = measure(model_path, args.threads, ports, args.runs)
    finally:
        for server in servers.values():
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)

    served = measured["process"]  # the default: the engine in a worker process
    bare_tps = median(measured["bare_loop"], "tokens_per_s")
    one_tps = median(served["single"], "tokens_per_s")
    one_total = median(served["single"], "total_s")
    eight_tps = median(served["concurrent"], "aggregate_tokens_per_s")
    ttft_p95 = median(served["concurrent"], "ttft_p95_s")
    chat_ratio = median(measured["chat"], "ratio")
    in_process = measured["thread"]
    rows: list[tuple[str, float, str | None, float | None]] = [
        ("bare loop tokens/s", bare_tps, None, None),
        ("bare loop first token (s)", median(measured["bare_loop"], "ttft_s"), None, None),
        ("1 client tokens/s", one_tps, None, None),
        ("1 client first token (s)", median(served["single"], "ttft_s"), None, None),
        ("1 client / bare loop", one_tps / bare_tps, ">=", 0.95),
        ("8 clients aggregate tokens/s", eight_tps, None, None),
        ("8 clients / 1 client", eight_tps / one_tps, ">=", 1.4),
        (
            "bare loop, 8 sequences tokens/s",
            median(measured["bare_loop_8"], "tokens_per_s"),
            None,
            None,
        ),
        (
            "llama.cpp ceiling: bare 8 / bare 1",
            median(measured["bare_loop_8"], "tokens_per_s") / bare_tps,
            None,
            None,
        ),
        ("8 clients first token p50 (s)", median(served["concurrent"], "ttft_p50_s"), None, None),
        ("8 clients first token p95 (s)", ttft_p95, None, None),
        ("8-client p95 first token / 1 stream", ttft_p95 / one_total, "<=", 0.15),
        (
            "chat first turn first token (s)",
            median(measured["chat"], "first_turn_ttft_s"),
            None,
            None,
        ),
        (
            "chat next turn first token (s)",
            median(measured["chat"], "next_turn_ttft_s"),
            None,
            None,
        ),
        ("chat next turn / first turn", chat_ratio, "<=", 0.3),
        (
            "in-process engine, 1 client tokens/s",
            median(in_process["single"], "tokens_per_s"),
            None,
            None,
        ),
        (
            "in-process engine, 8 clients tokens/s",
            median(in_process["concurrent"], "aggregate_tokens_per_s"),
            None,
            None,
        ),
        (
            "worker / in-process, 1 client",
            one_tps / median(in_process["single"], "tokens_per_s"),
            ">=",
            0.97,
        ),
        (
            "worker / in-process, 8 clients",
            eight_tps / median(in_process["concurrent"], "aggregate_tokens_per_s"),
            ">=",
            0.97,
        ),
    ]
    if PEER in measured:
        peer = measured[PEER]
        peer_one = median(peer["single"], "tokens_per_s")
        peer_eight = median(peer["concurrent"], "aggregate_tokens_per_s")
        peer_p95 = median(peer["concurrent"], "ttft_p95_s")
        rows += [
            ("llama-server, 1 client tokens/s", peer_one, None, None),
            ("llama-server, 8 clients tokens/s", peer_eight, None, None),
            ("llama-server, 8 clients / 1 client", peer_eight / peer_one, None, None),
            ("llama-server, 8 clients first token p95 (s)", peer_p95, None, None),
            (
                "llama-server, p95 first token / 1 stream",
                peer_p95 / median(peer["single"], "total_s"),
                None,
                None,
            ),
            ("ours / llama-server, 1 client", one_tps / peer_one, None, None),
            ("ours / llama-server, 8 clients", eight_tps / peer_eight, None, None),
        ]
    print(f"{'metric':44} {'median':>10} {'target':>10}  verdict")
    table = []
    for name, value, op, target in rows:
        outcome = "" if op is None or target is None else verdict(value, op, target)
        shown_target = f"{op} {target}" if op else ""
        print(f"{name:44} {value:10.3f} {shown_target:>10}  {outcome}")
        table.append({"metric": name, "median": value, "target": shown_target, "verdict": outcome})

    report = {
        "machine": machine_record(args.threads),
        "runs": args.runs,
        "new_tokens": NEW_TOKENS,
        "table": table,
        **measured,
    }
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
