"""What each KV cache type costs and saves: f16, q8_0 and q4_0 K and V, on llama.cpp's API.

    .venv/bin/python benchmarks/kv_cache.py [--contexts 1024,4096,16384] [--threads 2]
        [--decode-steps 32] [--prompt-tokens N] [--json PATH]

With Gemma 3 270M (trained for 32,768 tokens; the test suite's second model, joined from its
PyPI chunk packages), for each context and each type, K and V alike, in one run:

- memory per 1,000 tokens of context: llama.cpp's own "KV buffer size" for one sequence of
  that context, and the plan's estimate (placement/memory.py) beside it;
- prompt tokens/s: a prompt that fills the context but for the decode steps (or of
  --prompt-tokens, to keep a run on a busy machine short), in 512-token chunks (flash
  attention on, which a quantized V needs);
- decode tokens/s: single-token steps at the end of that prompt.

Prints the table with targets (the quantized caches take the memory their blocks say, 34 and
18 bytes per 32 values against 64, and keep at least half of f16's speed) and writes it as
JSON. The types run in turn at each context, so a change in the machine's load hits all alike.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import llama_cpp as lc
from launch import machine_record, verdict

from locallab_gguf.engine.types import KvCacheType
from locallab_gguf.placement.memory import KvCache, place
from locallab_gguf.placement.offload import read_model_memory

ROOT = Path(__file__).resolve().parent.parent
BATCH = 512
TYPES = (KvCacheType.F16, KvCacheType.Q8_0, KvCacheType.Q4_0)
GGML_TYPES = {
    KvCacheType.F16: lc.GGML_TYPE_F16,
    KvCacheType.Q8_0: lc.GGML_TYPE_Q8_0,
    KvCacheType.Q4_0: lc.GGML_TYPE_Q4_0,
}
_reported: list[str] = []


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _keep_kv_lines(_level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", errors="replace")
    if "KV buffer size" in line:
        _reported.append(line)


def gemma_path() -> Path:
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.support.two_models import assembled_gemma

    return assembled_gemma()


def measure(
    model: Any, kind: KvCacheType, context: int, args: argparse.Namespace
) -> dict[str, float]:
    _reported.clear()
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = context, BATCH, BATCH, 1
    params.n_threads = params.n_threads_batch = args.threads
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
    params.type_k = params.type_v = GGML_TYPES[kind]
    handle = lc.llama_init_from_model(model, params)
    if not handle:
        raise RuntimeError(f"llama.cpp refused a {kind.value} cache of {context} tokens")
    batch = lc.llama_batch_init(BATCH, 0, 1)
    rng = random.Random(7)
    try:

        def decode(tokens: list[int], start: int) -> None:
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i] = token, start + i
                batch.n_seq_id[i], batch.logits[i] = 1, i == len(tokens) - 1
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(tokens)
            if lc.llama_decode(handle, batch) != 0:
                raise RuntimeError("llama_decode failed")

        length = context - args.decode_steps - 1
        if args.prompt_tokens:
            length = min(length, args.prompt_tokens)
        prompt = [rng.randrange(1000, 200_000) for _ in range(length)]
        started = time.perf_counter()
        for start in range(0, len(prompt), BATCH):
            decode(prompt[start : start + BATCH], start)
        prompt_s = time.perf_counter() - started
        started = time.perf_counter()
        for step in range(args.decode_steps):
            decode([1234], len(prompt) + step)
        decode_s = time.perf_counter() - started
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(handle)
    sizes = [float(m.group(1)) for line in _reported if (m := re.search(r"= *([\d.]+) MiB", line))]
    return {
        "kv_bytes": sum(sizes) * 1024 * 1024,
        "prompt_tokens_per_s": len(prompt) / prompt_s,
        "decode_tokens_per_s": args.decode_steps / decode_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="1024,4096,16384")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=0, help="0: fill the context")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/kv_cache.json")
    args = parser.parse_args()
    contexts = [int(text) for text in args.contexts.split(",")]

    lc.llama_log_set(_keep_kv_lines, ctypes.c_void_p())
    lc.llama_backend_init()
    path = gemma_path()
    memory = read_model_memory(path)
    model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
    results: dict[str, dict[str, dict[str, float]]] = {}
    for context in contexts:
        for kind in TYPES:
            figures = measure(model, kind, context, args)
            kv = KvCache(context_per_slot=context, parallel=1, type_k=kind, type_v=kind)
            figures["planned_kv_bytes"] = place(memory, 0, kv).ram_kv_bytes
            results.setdefault(str(context), {})[kind.value] = figures
            print(f"{context} {kind.value}: {json.dumps(figures)}", flush=True)
    lc.llama_model_free(model)

    table = []
    print(
        f"\n{'context':>7} {'type':>5} {'MiB/1k tok':>10} {'planned':>8} {'prompt t/s':>10} "
        f"{'decode t/s':>10} {'vs f16 mem':>10} {'target':>8} {'verdict':>7} {'speed':>6}"
    )
    for context in contexts:
        f16 = results[str(context)]["f16"]
        for kind in TYPES:
            row = results[str(context)][kind.value]
            per_1k = row["kv_bytes"] / context * 1000 / 2**20
            share = row["kv_bytes"] / f16["kv_bytes"]
            expected = {"f16": 1.0, "q8_0": 34 / 64, "q4_0": 18 / 64}[kind.value]
            memory_ok = verdict(abs(share - expected), "<=", 0.01)
            speed = min(
                row["prompt_tokens_per_s"] / f16["prompt_tokens_per_s"],
                row["decode_tokens_per_s"] / f16["decode_tokens_per_s"],
            )
            speed_ok = verdict(speed, ">=", 0.5)
            print(
                f"{context:>7} {kind.value:>5} {per_1k:>10.2f} "
                f"{row['planned_kv_bytes'] / context * 1000 / 2**20:>8.2f} "
                f"{row['prompt_tokens_per_s']:>10.1f} {row['decode_tokens_per_s']:>10.1f} "
                f"{share:>10.3f} {expected:>8.3f} {memory_ok:>7} {speed_ok:>6}"
            )
            table.append(
                {
                    "context": context,
                    "type": kind.value,
                    "kv_mib_per_1000_tokens": per_1k,
                    "planned_mib_per_1000_tokens": row["planned_kv_bytes"] / context * 1000 / 2**20,
                    "prompt_tokens_per_s": row["prompt_tokens_per_s"],
                    "decode_tokens_per_s": row["decode_tokens_per_s"],
                    "memory_vs_f16": share,
                    "memory_target": expected,
                    "memory_verdict": memory_ok,
                    "speed_vs_f16": speed,
                    "speed_verdict": speed_ok,
                }
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": machine_record(args.threads),
        "model": path.name,
        "settings": vars(args) | {"json": str(args.json)},
        "table": table,
        "runs": results,
    }
    args.json.write_text(json.dumps(record, indent=2))
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
