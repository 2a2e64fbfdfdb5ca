"""What a drafted token costs: one decode of N sequences with k tokens each, against k = 1.

    .venv/bin/python benchmarks/draft_cost.py [--runs 9] [--threads 2] [--json PATH]

Speculative decoding (engine/runtime/speculation.py) decides whether drafts pay from one
number: what one more token in a decode costs, as a share of a one-token decode. Each engine
measures it when it opens (engine/runtime/draft_cost.py: one sequence, 1 against 9 tokens);
EXTRA_TOKEN_COST is the figure assumed where it cannot. This measures it across batch shapes
on llama.cpp's API with the default model, as the engine decodes:
8 sequences holding a 60-token prompt each, then one decode in which 1, 2, 4 or 8 of them
each carry 1 + d tokens (their next token and d drafted ones, d = 0, 1, 2, 4, 8, 16), the
median of --runs decodes. Prints each decode's time, its cost over the same sequences with
no draft, and the cost per extra token as a share of a one-sequence, one-token decode (what
EXTRA_TOKEN_COST stands for), with the constant's value beside; writes it all as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import llama_cpp
from launch import default_model_path, machine_record

from locallab_gguf.engine.runtime.llama import LlamaModel, create_context, put_token
from locallab_gguf.engine.runtime.speculation import EXTRA_TOKEN_COST
from locallab_gguf.engine.types import EngineConfig

ROOT = Path(__file__).resolve().parent.parent
SEQUENCES = (1, 2, 4, 8)
DRAFTS = (0, 1, 2, 4, 8, 16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/draft_cost.json")
    args = parser.parse_args()
    model = LlamaModel(Path(default_model_path()))
    config = EngineConfig(
        n_ctx=1024, n_parallel=8, n_threads=args.threads, n_threads_batch=args.threads
    )
    context = create_context(model, config, 1024, unified=False)
    memory = llama_cpp.llama_get_memory(context)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    prompt = model.tokenize("Once upon a time a fox lived in a quiet forest. " * 5, True)
    for seq in range(8):
        for index, token in enumerate(prompt):
            put_token(batch, index, token, index, seq, index == len(prompt) - 1)
        batch.n_tokens = len(prompt)
        llama_cpp.llama_decode(context, batch)

    def decode_ms(sequences: int, per: int) -> float:
        n = 0
        for seq in range(sequences):
            for offset in range(per):  # any tokens: the cost does not depend on which
                put_token(batch, n, 100 + offset, len(prompt) + offset, seq, True)
                n += 1
        batch.n_tokens = n
        started = time.perf_counter()
        llama_cpp.llama_decode(context, batch)
        elapsed = (time.perf_counter() - started) * 1000
        for seq in range(sequences):
            llama_cpp.llama_memory_seq_rm(memory, seq, len(prompt), -1)
        return elapsed

    rows: list[dict[str, Any]] = []
    for sequences in SEQUENCES:
        for drafted in DRAFTS:
            decode_ms(sequences, 1 + drafted)  # a new batch shape allocates its graph first
            runs = [decode_ms(sequences, 1 + drafted) for _ in range(args.runs)]
            rows.append(
                {
                    "sequences": sequences,
                    "drafted_per_sequence": drafted,
                    "ms": statistics.median(runs),
                    "ms_spread": [min(runs), max(runs)],
                }
            )
    single = next(r["ms"] for r in rows if r["sequences"] == 1 and r["drafted_per_sequence"] == 0)
    print(f"one sequence, one token: {single:.2f} ms; EXTRA_TOKEN_COST = {EXTRA_TOKEN_COST}")
    print(f"{'seqs':>4} {'drafted':>7} {'ms':>8} {'x no draft':>10} {'per extra token':>15}")
    for row in rows:
        base = next(
            r["ms"]
            for r in rows
            if r["sequences"] == row["sequences"] and r["drafted_per_sequence"] == 0
        )
        extra = row["sequences"] * row["drafted_per_sequence"]
        row["over_no_draft"] = row["ms"] / base
        row["per_extra_token"] = (row["ms"] - base) / extra / single if extra else None
        share = f"{row['per_extra_token']:.3f}" if extra else "-"
        print(
            f"{row['sequences']:>4} {row['drafted_per_sequence']:>7} {row['ms']:>8.2f} "
            f"{row['over_no_draft']:>10.2f} {share:>15}"
        )
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(context)
    model.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine_record(args.threads), "single_ms": single, "rows": rows}
    args.json.write_text(json.dumps(record, indent=2))
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
