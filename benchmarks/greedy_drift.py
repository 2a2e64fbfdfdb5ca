"""How many greedy answers differ between two llama.cpp builds on this machine.

Greedy text depends on the kernels a build picks (AVX-512, AVX2, SSE3 round differently), so
a test that expects one machine's greedy answer fails on another. Run this once with each
build's Python and compare:

    .venv/bin/python benchmarks/greedy_drift.py --out native.json
    .venv-portable/bin/python benchmarks/greedy_drift.py --out portable.json
    python3 benchmarks/greedy_drift.py --compare native.json portable.json

Each run writes the 64-token greedy continuation of 30 prompts, the build's system info and
the seconds it took; --compare prints how many answers differ and the time ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

SUBJECTS = [
    "the history of the bicycle",
    "how bees make honey",
    "why the sky is blue",
    "the rules of chess",
    "a day in a lighthouse",
    "the water cycle",
    "how to bake bread",
    "the moons of Jupiter",
    "the invention of paper",
    "a walk through a forest in autumn",
]
STYLES = [
    "Write a short paragraph about {}.",
    "Explain {} to a child.",
    "List three facts about {}.",
]
PROMPTS = [style.format(subject) for subject in SUBJECTS for style in STYLES]
NEW_TOKENS = 64


def answers(model_path: str, threads: int) -> dict[str, Any]:
    from locallab_gguf.openmp import tune_for_serving

    # Before llama.cpp loads: an unbounded spin wastes a busy machine's cores.
    tune_for_serving(os.environ)
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    started = time.perf_counter()
    texts = []
    for prompt in PROMPTS:
        reply = llm.create_chat_completion(
            [{"role": "user", "content": prompt}], max_tokens=NEW_TOKENS, temperature=0.0
        )
        texts.append(reply["choices"][0]["message"]["content"])
    return {
        "system_info": llama_cpp.llama_print_system_info().decode(),
        "seconds": time.perf_counter() - started,
        "answers": texts,
    }


def compare(first: Path, second: Path) -> None:
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    differ = sum(x != y for x, y in zip(a["answers"], b["answers"], strict=True))
    print(f"{first.name}: {a['system_info'].strip()}")
    print(f"{second.name}: {b['system_info'].strip()}")
    print(f"answers that differ: {differ} of {len(a['answers'])}")
    print(f"seconds: {a['seconds']:.1f} against {b['seconds']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write this build's answers here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    if args.out is None:
        parser.error("give --out FILE or --compare A B")
    from launch import default_model_path

    args.out.write_text(json.dumps(answers(default_model_path(), args.threads), indent=1))


if __name__ == "__main__":
    main()
