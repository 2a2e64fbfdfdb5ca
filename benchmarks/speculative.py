"""Speculative decoding: ours with it and without, against llama.cpp's server, in one run.

    .venv/bin/python benchmarks/speculative.py [--runs 3] [--threads 2] [--json PATH]
        [--llama-server PATH] [--only edit,json,tool,story,edit8,story8]

Starts `locallab-gguf serve` twice (speculation on, the default, and `--speculative off`) and,
with --llama-server, llama.cpp's server twice (`--spec-type ngram-mod`, its best n-gram type
on this machine, and without speculation), all with 8 slots of 2,048 tokens, and streams the
same greedy requests to each through the OpenAI chat route, interleaved, each workload's runs
one after the other on every server:

- edit: a ~600-token text with a few misspellings, to be repeated with them fixed;
- json: a `json_schema` answer with 10 fixed keys;
- tool: a required call of a tool with 4 arguments (ours only: llama-server needs --jinja);
- story: a free story, nothing to copy (1 client), and story8 / edit8: 8 clients at once.

Each run's prompt starts with its own line, so no server answers from a cached prompt. Reports
the median of the runs: end-to-end tokens/s (completion tokens over the whole request, prompt
included) and decode tokens/s (after the first token), the acceptance by source from our
/system/info, a table with the targets of the issue and verdicts, and everything as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from launch import (
    default_model_path,
    free_port,
    machine_record,
    start_llama_server,
    start_ours,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
SLOT_TOKENS = 2048
MODEL = "smollm2-135m-instruct"  # the registry's default; llama-server ignores the name
SPEC, PLAIN, PEER_SPEC, PEER = "ours", "ours_off", "llama_server_ngram_mod", "llama_server"

EDIT_TEXT = (
    "The harbour town woke slowly on winter mornings. Fishermen walked down to the quay before "
    "the sun rose, carrying nets that they had mended by lamplight the night before. The baker "
    "on the corner opened his shutters at six, and the smell of fresh bread drifted along the "
    "narrow streets towards the church. Children ran to school past the old stone walls, and "
    "their teachers waited at the gate with cups of tea. In the afternoon the wind often turned, "
    "and the boats came back early with their catch: cod and haddock in the cold months, "
    "mackerel when the water grew warmer. The market hall filled with voices, and the "
    "auctioneer called out prices faster than anyone could follow. By evening the lights of the "
    "pub glowed across the harbour, and the sailors told stories of storms they had survived "
    "and of friends they had lost. Nobody in the town was rich, but nobody went hungry either, "
    "because neighbours shared what they had and remembered who had helped them in bad years. "
    "The lighthouse keeper climbed his tower every night and polished the great lens until it "
    "shone. He wrote the weather in a logbook that his grandfather had started, and he never "
    "missed a single entry, not even on the night of the great flood. Visitors who came in "
    "summer found the town charming and a little strange; they photographed the painted doors "
    "and the crooked chimneys, bought postcards and left before the autumn gales arrived. The "
    "people who stayed knew that the real life of the town began when the visitors had gone."
)
MISSPELLINGS = {
    "morning": "mornnig",
    "carrying": "carying",
    "shutters": "shuters",
    "teachers": "teachres",
    "auctioneer": "auctionere",
    "survived": "survivved",
    "neighbours": "nieghbours",
    "lighthouse": "lighthuose",
    "grandfather": "grandfathr",
    "photographed": "photograped",
}
EDIT_ASK = "Repeat the text above exactly, word for word, fixing only the spelling mistakes."
KEYS = [
    "name",
    "age",
    "city",
    "country",
    "email",
    "phone",
    "job",
    "company",
    "hobby",
    "pet",
]  # ten fixed keys
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        key: {"type": "integer"} if key == "age" else {"type": "string", "maxLength": 24}
        for key in KEYS
    },
    "required": list(KEYS),
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather_forecast",
        "description": "The weather forecast for a place and day",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "country": {"type": "string"},
                "day": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "country", "day", "unit"],
        },
    },
}
STORY_TOPICS = [
    "a fox who learns to sail",
    "a clockmaker's last clock",
    "a city where it never rains",
    "a girl who talks to bees",
    "the night the library moved",
    "a robot gardener",
    "two brothers and a kite",
    "a lost letter's journey",
]


def misspelled(text: str) -> str:
    for right, wrong in MISSPELLINGS.items():
        text = text.replace(right, wrong, 1)
    return text


def body_for(workload: str, run: int, client: int = 0) -> dict[str, Any]:
    """The chat request of one workload; its first line makes each run's prompt unique."""
    tag = f"(Request {run}.{client}.)\n"
    body: dict[str, Any] = {"temperature": 0, "stream": True, "max_tokens": 400}
    if workload.startswith("edit"):
        content = f"{tag}{misspelled(EDIT_TEXT)}\n\n{EDIT_ASK}"
        body["max_tokens"] = 700
    elif workload == "json":
        content = f"{tag}Describe a fictional person as JSON."
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA},
        }
    elif workload == "tool":
        content = f"{tag}What will the weather be in Lyon, France on Friday, in celsius?"
        body["tools"] = [WEATHER_TOOL]
        body["tool_choice"] = "required"
    else:
        content = f"{tag}Write a short story about {STORY_TOPICS[client % len(STORY_TOPICS)]}."
        body["max_tokens"] = 200
    body["messages"] = [{"role": "user", "content": content}]
    body["stream_options"] = {"include_usage": True}
    return body


class Timing:
    def __init__(self, started: float, first: float, ended: float, tokens: int) -> None:
        self.started, self.first, self.ended, self.tokens = started, first, ended, tokens

    def record(self) -> dict[str, float]:
        total = self.ended - self.started
        decode = self.ended - self.first
        return {
            "tokens": self.tokens,
            "total_s": total,
            "ttft_s": self.first - self.started,
            "end_to_end_tokens_per_s": self.tokens / total,
            "decode_tokens_per_s": (self.tokens - 1) / decode if decode > 0 else 0.0,
        }


async def stream_chat(port: int, body: dict[str, Any]) -> Timing:
    """One streamed chat completion over a bare HTTP/1.1 connection (the client's own cost
    stays out of the figures): when it started, its first content, its end, its usage."""
    payload = json.dumps({"model": MODEL, **body}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"answered {status!r}: {await reader.read()!r}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        chunked = chunked or line.lower().startswith(b"transfer-encoding: chunked")
    first: float | None = None
    tokens = 0
    data = b""
    while True:
        if chunked:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            data += await reader.readexactly(size)
            await reader.readline()
        else:
            piece = await reader.read(65536)
            if not piece:
                break
            data += piece
        *events, data = data.split(b"\n\n")
        for event in events:
            event = event.strip()
            if not event.startswith(b"data: {"):
                continue
            chunk = json.loads(event[len(b"data: ") :])
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
            delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
            if first is None and (delta.get("content") or delta.get("tool_calls")):
                first = time.perf_counter()
    ended = time.perf_counter()
    writer.close()
    assert first is not None, "the stream carried no content"
    return Timing(started, first, ended, tokens)


async def clients(port: int, workload: str, run: int, count: int) -> dict[str, Any]:
    timings = await asyncio.gather(
        *(stream_chat(port, body_for(workload, run, client)) for client in range(count))
    )
    if count == 1:
        return timings[0].record()
    span = max(t.ended for t in timings) - min(t.started for t in timings)
    tokens = sum(t.tokens for t in timings)
    return {"tokens": tokens, "total_s": span, "end_to_end_tokens_per_s": tokens / span}


WORKLOADS = {  # name -> clients
    "edit": 1,
    "json": 1,
    "tool": 1,
    "story": 1,
    "edit8": 8,
    "story8": 8,
}


def speculation_stats(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/system/info") as reply:
        info = json.load(reply)
    return dict(info["model"]["engine"]["speculation"])


COST = "extra_token_cost"  # a figure of the engine, not a count: reported as it is


def measure(ports: dict[str, int], workloads: list[str], runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {w: {server: [] for server in ports} for w in workloads}
    acceptance: dict[str, Any] = {}
    for port in ports.values():  # one warm-up each
        asyncio.run(clients(port, "story", -1, 1))
    for workload in workloads:
        count = WORKLOADS[workload]
        before = speculation_stats(ports[SPEC])
        for run in range(runs):
            for server, port in ports.items():
                if workload == "tool" and server in (PEER, PEER_SPEC):
                    continue
                results[workload][server].append(asyncio.run(clients(port, workload, run, count)))
        after = speculation_stats(ports[SPEC])
        acceptance[workload] = {key: after[key] - before[key] for key in after if key != COST}
    return {
        "runs": results,
        "acceptance": acceptance,
        COST: speculation_stats(ports[SPEC])[COST],
    }


def median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(row[key] for row in rows)) if rows else float("nan")


def spread(rows: list[dict[str, Any]], key: str, digits: int = 1) -> str:
    """The lowest and highest of the runs, beside their median: these machines are noisy."""
    values = [row[key] for row in rows]
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if values else ""


# (workload, metric, server, over server, at least): the targets.
TARGETS = [
    ("edit", "decode_tokens_per_s", SPEC, PEER_SPEC, 1.3),
    ("edit", "decode_tokens_per_s", SPEC, PLAIN, 2.5),
    ("edit", "end_to_end_tokens_per_s", SPEC, PEER_SPEC, 1.15),
    ("json", "end_to_end_tokens_per_s", SPEC, PEER, 1.5),
    ("tool", "end_to_end_tokens_per_s", SPEC, PLAIN, 1.3),
    ("story", "end_to_end_tokens_per_s", SPEC, PLAIN, 0.97),
    ("story8", "end_to_end_tokens_per_s", SPEC, PLAIN, 0.97),
    ("edit8", "end_to_end_tokens_per_s", SPEC, PLAIN, 1.3),
]


def table(measured: dict[str, Any]) -> list[dict[str, Any]]:
    runs = measured["runs"]
    rows = []
    for workload, servers in runs.items():
        for server, records in servers.items():
            if records:
                # Greedy answers with and without speculation may differ where the batch
                # shape changes the kernels' rounding (not in --deterministic): the counts
                # show when they did.
                for metric in ("tokens", "end_to_end_tokens_per_s", "decode_tokens_per_s"):
                    if metric in records[0]:
                        rows.append(
                            {
                                "what": f"{workload} {server} {metric}",
                                "value": median(records, metric),
                                "spread": spread(records, metric),
                            }
                        )
    for workload, metric, server, other, bound in TARGETS:
        if workload not in runs or not runs[workload].get(server) or not runs[workload].get(other):
            continue
        ratio = median(runs[workload][server], metric) / median(runs[workload][other], metric)
        # Each run's own ratio (the two servers ran it one after the other): their range.
        pairs = [
            {"ratio": mine[metric] / theirs[metric]}
            for mine, theirs in zip(runs[workload][server], runs[workload][other], strict=False)
        ]
        rows.append(
            {
                "what": f"{workload} {metric}: {server} / {other}",
                "value": ratio,
                "spread": spread(pairs, "ratio", digits=2),
                "target": f">= {bound}",
                "verdict": verdict(ratio, ">=", bound),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/speculative.json")
    parser.add_argument("--llama-server", type=Path, metavar="PATH")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="workloads, comma-separated")
    args = parser.parse_args()
    workloads = [w for w in args.only.split(",") if w]
    model_path = default_model_path()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    servers: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    common = ["--parallel", "8", "--ctx", str(SLOT_TOKENS)]
    try:
        for name, options in ((SPEC, []), (PLAIN, ["--speculative", "off"])):
            ports[name] = free_port()
            log = args.json.with_suffix(f".{name}.log")
            servers[name] = start_ours(ports[name], args.threads, [*common, *options], log)
        if args.llama_server is not None:
            for name, extra in ((PEER_SPEC, ("--spec-type", "ngram-mod")), (PEER, ())):
                ports[name] = free_port()
                servers[name] = start_llama_server(
                    args.llama_server,
                    ports[name],
                    args.threads,
                    model_path,
                    slots=8,
                    slot_tokens=SLOT_TOKENS,
                    log=args.json.with_suffix(f".{name}.log"),
                    options=extra,
                )
        measured = measure(ports, workloads, args.runs)
    finally:
        for server in servers.values():
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
    rows = table(measured)
    for row in rows:
        target = f"  {row['target']:>8}  {row['verdict']}" if "target" in row else ""
        runs = f"  ({row['spread']})" if row.get("spread") else ""
        print(f"{row['what']:<72} {row['value']:8.2f}{target}{runs}")
    print("acceptance (ours):", json.dumps(measured["acceptance"]))
    print(f"a drafted token's cost as ours measured it: {measured[COST]:.2f} of a step")
    record = {"machine": machine_record(args.threads), "rows": rows, **measured}
    args.json.write_text(json.dumps(record, indent=2))
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
