"""Hub models as people name them, planned before they are downloaded, and split in parts.

The hub is tests/support/local_hub.py serving the default model's real file, a copy of it in
three parts (tests/support/gguf_split.py), and a file with its header and three times its
weights; it counts the bytes of file bodies it sends.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from locallab_gguf.errors import ModelUnavailable
from locallab_gguf.models.download import remove_cached
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.models.ids import HubFile, hub_spec
from locallab_gguf.serving.loader import hub_file_plan, offload_plan
from tests.conftest import DEFAULT_ID, DETERMINISTIC_SETTINGS, ServerFactory
from tests.support.gguf_split import grown_model, split_model
from tests.support.local_hub import LocalHub
from tests.support.nvml_standin import GIB, NvmlStandIn, SimulatedGpu, simulated_probe

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
BIG_REPO = "test-owner/big-GGUF"
BIG_FILE = "SmolLM2-x3-Q4_1.gguf"
QUANTS_REPO = "test-owner/quants-GGUF"
SPLIT_REPO = "test-owner/split-GGUF"
FRANCE = {
    "messages": [
        {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
    ],
    "temperature": 0,
    "max_tokens": 24,
}


def hub_files(hub: LocalHub, tmp_path: Path) -> ModelFiles:
    return ModelFiles(str(tmp_path / "cache"), access=HubAccess(endpoint=hub.url))


@pytest.fixture
def big_model(model_path: Path, tmp_path: Path) -> Path:
    return grown_model(model_path, tmp_path / BIG_FILE, 3)


def test_the_plan_from_the_hub_is_the_plan_after_download_and_reads_under_one_percent(
    hub: LocalHub, big_model: Path, tmp_path: Path
) -> None:
    hub.add(BIG_REPO, BIG_FILE, big_model)
    spec = hub_spec(HubFile(BIG_REPO, BIG_FILE))
    files = hub_files(hub, tmp_path)
    # A GPU that takes some of the layers: the plan has every part to compare.
    hardware = simulated_probe(
        NvmlStandIn([SimulatedGpu("Small GPU", 2 * GIB, 1000 * MIB)]), available_ram=8 * GIB
    ).read()

    before = hub_file_plan(DETERMINISTIC_SETTINGS, spec, hardware, files.access)
    read = hub.bytes_sent[BIG_FILE]
    path = files.fetch(spec)
    after = offload_plan(DETERMINISTIC_SETTINGS, spec, path, hardware)

    assert before == after
    assert 0 < before.estimate.gpu_layers < before.estimate.total_layers
    assert read < 0.01 * big_model.stat().st_size


def test_a_load_that_cannot_fit_is_refused_before_its_download(
    make_server: ServerFactory, hub: LocalHub, big_model: Path, tmp_path: Path
) -> None:
    hub.add(BIG_REPO, BIG_FILE, big_model)
    cramped = simulated_probe(NvmlStandIn([]), offload_supported=False, available_ram=300 * MIB)
    server = make_server(
        DETERMINISTIC_SETTINGS,
        files=hub_files(hub, tmp_path),
        hardware=cramped,
        initial_model=None,
        wait_for=None,
    )
    reply = server.client.post("/models/load", json={"model_id": f"{BIG_REPO}:Q4_1"})
    assert reply.status_code == 507, reply.text
    assert "needs about" in reply.json()["detail"]
    # A request naming it loads it on demand: refused the same way, before any download.
    chat = server.client.post(
        "/v1/chat/completions", json={**FRANCE, "model": f"{BIG_REPO}:{BIG_FILE}"}
    )
    assert chat.status_code == 507, chat.text
    # Ollama's pull plans it too, and says so before its stream starts.
    pulled = server.client.post("/api/pull", json={"model": f"{BIG_REPO}:{BIG_FILE}"})
    assert pulled.status_code == 507, pulled.text
    assert "needs about" in pulled.json()["error"]
    assert hub.bytes_sent[BIG_FILE] < 0.01 * big_model.stat().st_size
    assert not list((tmp_path / "cache").rglob("*.gguf"))


def test_a_quantization_names_one_file_and_several_or_none_are_listed(
    make_server: ServerFactory, hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    for name in ("SmolLM2-Q4_1.gguf", "SmolLM2-Q8_0.gguf", "SmolLM2-Instruct-Q8_0.gguf"):
        hub.add(QUANTS_REPO, name, model_path)
    server = make_server(DETERMINISTIC_SETTINGS, files=hub_files(hub, tmp_path))

    several = server.client.post("/models/load", json={"model_id": f"{QUANTS_REPO}:Q8_0"})
    assert several.status_code == 400, several.text
    assert "SmolLM2-Q8_0.gguf" in several.text and "SmolLM2-Instruct-Q8_0.gguf" in several.text

    nowhere = server.client.post("/models/load", json={"model_id": "test-owner/no-GGUF:Q4_0"})
    assert nowhere.status_code == 404 and "no repository" in nowhere.text, nowhere.text
    none = server.client.post("/models/load", json={"model_id": f"{QUANTS_REPO}:Q5_K_M"})
    assert none.status_code == 404, none.text
    assert "SmolLM2-Q4_1.gguf" in none.text  # what the repository has

    one = server.client.post("/models/load", json={"model_id": f"hf.co/{QUANTS_REPO}:q4_1"})
    assert one.status_code == 200, one.text
    assert one.json()["model"]["id"] == f"{QUANTS_REPO}:SmolLM2-Q4_1.gguf"
    assert f"what 'hf.co/{QUANTS_REPO}:q4_1' picks" in one.json()["message"]
    assert hub.downloads() == 1
    ollama = server.client.post(
        "/api/generate",
        json={
            "model": f"hf.co/{QUANTS_REPO}:Q4_1",
            "prompt": "Hi",
            "stream": False,
            "options": {"num_predict": 2, "temperature": 0},
        },
    )
    assert ollama.status_code == 200, ollama.text
    assert hub.downloads() == 1  # the same model: resident already

    # The repository alone: no Q4_K_M here, so its smallest model (the first by name of three
    # of one size); named, not loaded, by asking its state.
    state = server.client.get(f"/models/status/{QUANTS_REPO}").json()
    assert state == {
        "model_id": f"{QUANTS_REPO}:SmolLM2-Instruct-Q8_0.gguf",
        "status": "unloaded",
        "downloaded_bytes": None,
        "total_bytes": None,
        "error": None,
        "plan": None,
    }


def test_a_split_model_pulls_verifies_loads_answers_like_the_whole_and_is_removed_whole(
    make_server: ServerFactory, hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    parts = split_model(model_path, tmp_path, "SmolLM2-Q4_1", 3)
    for part in parts:
        hub.add(SPLIT_REPO, part.name, part)
    server = make_server(DETERMINISTIC_SETTINGS, files=hub_files(hub, tmp_path))
    whole = server.client.post("/v1/chat/completions", json={**FRANCE, "model": DEFAULT_ID})
    assert whole.status_code == 200, whole.text

    loaded = server.client.post("/models/load", json={"model_id": f"{SPLIT_REPO}:Q4_1"})
    assert loaded.status_code == 200, loaded.text
    model_id = loaded.json()["model"]["id"]
    assert model_id == f"{SPLIT_REPO}:SmolLM2-Q4_1-00001-of-00003.gguf"
    split = server.client.post("/v1/chat/completions", json={**FRANCE, "model": model_id}).json()
    assert split["choices"][0]["message"] == whole.json()["choices"][0]["message"]
    cached = sorted(path.name for path in (tmp_path / "cache").rglob("*.gguf"))
    assert cached == [part.name for part in parts]
    for part in parts:  # each part whole, and checked against the hub's sha256
        assert hub.bytes_sent[part.name] >= part.stat().st_size

    removed = server.client.request("DELETE", "/api/delete", json={"model": model_id})
    assert removed.status_code == 200, removed.text
    assert not list((tmp_path / "cache").rglob("*.gguf"))

    # Pulled again through Ollama's API: the plan from the header comes before the bytes.
    lines = server.client.post("/api/pull", json={"model": f"{SPLIT_REPO}:Q4_1"})
    assert lines.status_code == 200, lines.text
    statuses = [msgspec.json.decode(line)["status"] for line in lines.text.splitlines()]
    plan = next(i for i, status in enumerate(statuses) if status.startswith("plan: "))
    assert "layers on the GPU" in statuses[plan] and "fits" in statuses[plan]
    bytes_from = next(
        i for i, status in enumerate(statuses) if status.startswith("pulling ") and i > 0
    )
    assert statuses[0] == "pulling manifest" and plan < bytes_from
    assert statuses[-1] == "success"


def test_a_split_model_missing_a_part_is_refused_naming_it(
    make_server: ServerFactory, hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    parts = split_model(model_path, tmp_path, "SmolLM2-Q4_1", 3)
    for part in (parts[0], parts[2]):
        hub.add(SPLIT_REPO, part.name, part)
    server = make_server(DETERMINISTIC_SETTINGS, files=hub_files(hub, tmp_path))
    reply = server.client.post("/models/load", json={"model_id": f"{SPLIT_REPO}:{parts[0].name}"})
    assert reply.status_code == 404, reply.text
    assert parts[1].name in reply.json()["detail"]
    assert hub.bytes_sent.get(parts[0].name, 0) < parts[0].stat().st_size  # not downloaded
    assert msgspec.json.decode(server.client.get("/health").content)["status"] == "healthy"


def test_a_split_model_missing_a_part_here_names_it_and_fetches_only_that_part(
    hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    parts = split_model(model_path, tmp_path, "SmolLM2-Q4_1", 3)
    for part in parts:
        hub.add(SPLIT_REPO, part.name, part)
    files = hub_files(hub, tmp_path)
    spec = hub_spec(HubFile(SPLIT_REPO, parts[0].name))
    first = files.fetch(spec)
    assert hub.downloads() == 3
    remove_cached(first.with_name(parts[1].name))

    assert files.local_path(spec) is None
    with pytest.raises(ModelUnavailable) as caught:
        files.resolve(spec)
    assert f"{parts[1].name} (1 of the 3 parts of {parts[0].name})" in str(caught.value)
    assert files.fetch(spec) == first
    assert hub.downloads() == 4  # the missing part alone
    remove_cached(first)
    assert files.remove_cached(spec)  # the parts left, though the first is gone
    assert not list((tmp_path / "cache").rglob("*.gguf"))
