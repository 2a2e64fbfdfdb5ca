"""What constrained decoding costs: a json_schema answer and a required tool call against
free decoding of the same number of tokens.

    .venv/bin/python benchmarks/constrained.py [--runs 5] [--max-tokens 200] [--threads 2]
        [--json PATH]

Runs the engine in-process with the default model, one request at a time, greedy. For each
constrained case it generates until the grammar ends the answer, then generates the same
number of tokens freely (end-of-generation banned, so the length is exactly the same) from the
same prompt. Speed is decoding only: tokens after the first over the time since the first,
so prompt evaluation is left out. Prints the median of --runs runs and the ratio to free
decoding (target: >= 0.9) and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locallab_gguf.engine.runtime.scheduler import open_batch_engine  # noqa: E402
from locallab_gguf.engine.types import (  # noqa: E402
    ChatMessage,
    ChatOptions,
    EngineConfig,
    EventBatch,
    Finished,
    GenerationRequest,
    JsonOutput,
    SamplingParams,
    ToolSpec,
    ToolUse,
)
from locallab_gguf.models.files import ModelFiles  # noqa: E402
from locallab_gguf.models.registry import default_models_file, load_registry  # noqa: E402

FRUITS = (ChatMessage("user", "List ten fruits and their colours as JSON."),)
FRUIT_SCHEMA = {
    "type": "object",
    "properties": {
        "fruits": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "colour": {"type": "string"}},
                "required": ["name", "colour"],
            },
        }
    },
    "required": ["fruits"],
}
ORDER = (ChatMessage("user", "Order two small teas and a large coffee to 5 Main Street, Oslo."),)
ORDER_TOOL = ToolSpec(
    name="place_order",
    description="Order drinks to be delivered",
    parameters=json.dumps(
        {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "drink": {"type": "string"},
                            "size": {"enum": ["small", "medium", "large"]},
                            "quantity": {"type": "integer"},
                        },
                        "required": ["drink", "size", "quantity"],
                    },
                },
                "address": {"type": "string"},
            },
            "required": ["items", "address"],
        }
    ),
)


class Runner:
    """One engine; `run` sends a request and times its tokens."""

    def __init__(self, threads: int) -> None:
        registry = load_registry(default_models_file())
        path = ModelFiles().resolve(registry.get("smollm2-135m-instruct"))
        config = EngineConfig(n_threads=threads, n_threads_batch=threads, n_parallel=1, n_ctx=2048)
        self._done = threading.Event()
        self._times: list[float] = []
        self._finished: Finished | None = None
        self.engine = open_batch_engine(path, 0, config, self._deliver)
        model = self.engine.model
        self.eog = tuple(t for t in range(model.n_vocab) if model.is_end_of_generation(t))
        self._next_id = 0

    def _deliver(self, events: EventBatch) -> None:
        now = time.perf_counter()
        for _, event in events:
            if isinstance(event, Finished):
                self._finished = event
                self._done.set()
            else:
                self._times.append(now)

    def run(self, request: GenerationRequest) -> tuple[int, float]:
        """(completion tokens, decoding tokens/s)."""
        self._times, self._finished = [], None
        self._done.clear()
        self._next_id += 1
        started = time.perf_counter()
        self.engine.submit(self._next_id, request)
        self._done.wait()
        finished = self._finished
        assert finished is not None
        tokens = finished.usage.completion_tokens
        # Events come once per step; a step's time is when its events arrive.
        first = self._times[0] if self._times else started
        elapsed = time.perf_counter() - first
        return tokens, (tokens - 1) / elapsed if elapsed > 0 else math.nan

    def close(self) -> None:
        self.engine.close(drain=False)


def measure(runner: Runner, constrained: GenerationRequest, runs: int) -> dict[str, Any]:
    rows = []
    for _ in range(runs):
        tokens, speed = runner.run(constrained)
        free = GenerationRequest(
            messages=constrained.messages,
            max_tokens=tokens,
            sampling=SamplingParams(
                temperature=0.0, logit_bias=tuple((t, -math.inf) for t in runner.eog)
            ),
        )
        free_tokens, free_speed = runner.run(free)
        assert free_tokens == tokens, (free_tokens, tokens)
        rows.append({"tokens": tokens, "constrained": speed, "free": free_speed})
    constrained_speed = statistics.median(r["constrained"] for r in rows)
    free_speed = statistics.median(r["free"] for r in rows)
    return {
        "tokens": rows[0]["tokens"],
        "constrained_tokens_per_s": constrained_speed,
        "free_tokens_per_s": free_speed,
        "ratio": constrained_speed / free_speed,
        "runs": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runner = Runner(args.threads)
    greedy = SamplingParams(temperature=0.0)
    cases = {
        "json_schema": GenerationRequest(
            messages=FRUITS,
            max_tokens=args.max_tokens,
            sampling=SamplingParams(
                temperature=0.0, json_output=JsonOutput(schema=json.dumps(FRUIT_SCHEMA))
            ),
        ),
        "required tool call": GenerationRequest(
            messages=ORDER,
            max_tokens=args.max_tokens,
            sampling=greedy,
            chat=ChatOptions(tool_use=ToolUse(tools=(ORDER_TOOL,), mode="required")),
        ),
    }
    try:
        results = {name: measure(runner, request, args.runs) for name, request in cases.items()}
    finally:
        runner.close()
    print(f"{'case':<20} {'tokens':>6} {'constrained t/s':>16} {'free t/s':>9} {'ratio':>6}")
    for name, result in results.items():
        print(
            f"{name:<20} {result['tokens']:>6} {result['constrained_tokens_per_s']:>16.1f} "
            f"{result['free_tokens_per_s']:>9.1f} {result['ratio']:>6.2f}"
        )
    print("target: ratio >= 0.9")
    if args.json:
        machine = {"processor": platform.processor(), "python": platform.python_version()}
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
