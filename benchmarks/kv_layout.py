"""What the KV layout costs: a stream per slot against one unified pool, on llama.cpp's API.

    .venv/bin/python benchmarks/kv_layout.py [--runs 3] [--threads 2] [--idle-tokens 3000]
        [--prompt-tokens 3100] [--prefix-tokens 1550] [--json PATH]

With the default model, 8 sequences of 4,096 tokens, 512-token batches and flash attention
on llama.cpp's choice (the server's defaults), each run measures in both layouts:

- one sequence decoding, alone, then beside 7 idle sequences of --idle-tokens each (what
  slots that keep their last request's KV leave behind);
- a prompt of --prompt-tokens evaluated alone, then beside the same idle sequences;
- per slot: copying a prefix of --prefix-tokens from one slot's stream into another's (what a
  request sharing another slot's system prompt costs), against evaluating it.

Prints the medians with targets for the default layout (per slot) and writes every run as
JSON. The unified figures are printed beside, with no target: they say why it is not the
default.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import llama_cpp as lc
from launch import default_model_path, machine_record, verdict

from locallab_gguf.engine.runtime.kv import KvPool

ROOT = Path(__file__).resolve().parent.parent
SEQUENCES = 8
SLOT_TOKENS = 4096
BATCH = 512
DECODE_STEPS = 64


class Context:
    def __init__(self, model: Any, threads: int, unified: bool) -> None:
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = SLOT_TOKENS * SEQUENCES, BATCH, BATCH
        params.n_seq_max, params.kv_unified = SEQUENCES, unified
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
        self.handle = lc.llama_init_from_model(model, params)
        self.batch = lc.llama_batch_init(BATCH, 0, 1)
        self.kv = KvPool(self.handle, unified)
        self.random = random.Random(7)

    def close(self) -> None:
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.handle)

    def prompt(self, seq: int, count: int) -> float:
        """Evaluate `count` tokens of text-like ids into `seq` from position 0; seconds."""
        tokens = [self.random.randrange(1000, 40000) for _ in range(count)]
        started = time.perf_counter()
        for start in range(0, count, BATCH):
            part = tokens[start : start + BATCH]
            for i, token in enumerate(part):
                self._put(i, token, start + i, seq, start + i == count - 1)
            self._decode(len(part))
        return time.perf_counter() - started

    def decode(self, seq: int, position: int) -> float:
        """Tokens/s of DECODE_STEPS single-token steps of `seq` from `position`."""
        started = time.perf_counter()
        for step in range(DECODE_STEPS):
            self._put(0, 1234, position + step, seq, True)
            self._decode(1)
        return DECODE_STEPS / (time.perf_counter() - started)

    def _put(self, index: int, token: int, position: int, seq: int, logits: bool) -> None:
        batch = self.batch
        batch.token[index], batch.pos[index] = token, position
        batch.n_seq_id[index], batch.logits[index] = 1, logits
        batch.seq_id[index][0] = seq

    def _decode(self, count: int) -> None:
        self.batch.n_tokens = count
        status = lc.llama_decode(self.handle, self.batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")


def measure_layout(model: Any, args: argparse.Namespace, unified: bool) -> dict[str, float]:
    context = Context(model, args.threads, unified)
    try:
        result: dict[str, float] = {}
        # The first steps of a new context are slower (buffers first touched): warm both paths.
        context.prompt(0, BATCH)
        context.kv.clear(0)
        context.prompt(0, 16)
        context.decode(0, 16)
        result["decode_alone"] = context.decode(0, 16 + DECODE_STEPS)
        context.kv.clear(0)
        result["prompt_alone"] = args.prompt_tokens / context.prompt(0, args.prompt_tokens)
        context.kv.clear(0)
        # One idle sequence evaluated, the others restored from its saved state: cells of their
        # own in either layout, without evaluating the same tokens seven times.
        context.prompt(1, args.idle_tokens)
        idle = context.kv.save(1)
        for seq in range(2, SEQUENCES):
            if not context.kv.restore(seq, idle):
                raise RuntimeError("llama.cpp refused an idle sequence's state")
        context.prompt(0, 16)
        result["decode_beside"] = context.decode(0, 16)
        context.kv.clear(0)
        result["prompt_beside"] = args.prompt_tokens / context.prompt(0, args.prompt_tokens)
        if not unified:
            context.kv.clear(0)
            context.kv.clear(1)
            evaluate = context.prompt(1, args.prefix_tokens)
            started = time.perf_counter()
            if not context.kv.share(1, 0, args.prefix_tokens):
                raise RuntimeError("llama.cpp refused to copy the prefix")
            result["copy_s"] = time.perf_counter() - started
            result["evaluate_s"] = evaluate
        return result
    finally:
        context.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--idle-tokens", type=int, default=3000)
    parser.add_argument("--prompt-tokens", type=int, default=3100)
    parser.add_argument("--prefix-tokens", type=int, default=1550)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/kv_layout.json")
    args = parser.parse_args()

    silence = lc.llama_log_callback(lambda *_: None)
    lc.llama_log_set(silence, ctypes.c_void_p())
    lc.llama_backend_init()
    path = default_model_path()
    model = lc.llama_model_load_from_file(path.encode(), lc.llama_model_default_params())
    runs: list[dict[str, dict[str, float]]] = []
    for run in range(args.runs):  # the two layouts in turn, so drift hits both alike
        runs.append(
            {
                "per_slot": measure_layout(model, args, unified=False),
                "unified": measure_layout(model, args, unified=True),
            }
        )
        print(f"run {run}: {json.dumps(runs[-1])}", flush=True)
    lc.llama_model_free(model)

    def median(layout: str, key: str) -> float:
        return statistics.median(run[layout][key] for run in runs)

    def ratio(layout: str, key: str) -> float:
        return statistics.median(
            run[layout][f"{key}_beside"] / run[layout][f"{key}_alone"] for run in runs
        )

    copy_share = statistics.median(
        run["per_slot"]["copy_s"] / run["per_slot"]["evaluate_s"] for run in runs
    )
    Target = tuple[str, float] | None
    rows: list[tuple[str, float, Target, float | None]] = []
    for work in ("decode", "prompt"):
        for when, shown in (("alone", "alone"), ("beside", "beside idle slots")):
            key = f"{work}_{when}"
            rows.append(
                (f"{work} tokens/s, {shown}", median("per_slot", key), None, median("unified", key))
            )
        rows.append(
            (
                f"{work}, beside / alone",
                ratio("per_slot", work),
                (">=", 0.9),
                ratio("unified", work),
            )
        )
    rows.append(
        (
            f"copy {args.prefix_tokens} tokens between slots (s)",
            median("per_slot", "copy_s"),
            None,
            None,
        )
    )
    rows.append(("copy / evaluating them", copy_share, ("<=", 0.05), None))
    table = []
    print(f"{'figure':<44} {'per slot':>9} {'target':>8} {'verdict':>7} {'unified':>8}")
    for name, value, target, unified in rows:
        shown_target = "" if target is None else f"{target[0]} {target[1]}"
        outcome = "" if target is None else verdict(value, *target)
        shown = "" if unified is None else f"{unified:.3f}"
        print(f"{name:<44} {value:>9.3f} {shown_target:>8} {outcome:>7} {shown:>8}")
        table.append(
            {
                "figure": name,
                "per_slot": value,
                "target": shown_target,
                "verdict": outcome,
                "unified": unified,
            }
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": machine_record(args.threads),
        "settings": vars(args) | {"json": str(args.json)},
        "table": table,
        "runs": runs,
    }
    args.json.write_text(json.dumps(record, indent=2))
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
