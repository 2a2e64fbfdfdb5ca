"""Ollama's API under /api, through the official `ollama` client against the real server.

Model output is forced where a test compares text (a `format` schema that allows one string),
so the checks hold on any CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import ollama
import pytest

from locallab_gguf.placement.gguf_facts import gguf_facts
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.e2e.test_model_downloads import SMOL_FILE, hub_files, hub_registry
from tests.support.local_hub import LocalHub
from tests.support.servers import RunningServer

NAME = f"{DEFAULT_ID}:latest"
# The only JSON this schema allows is this one string, whatever the CPU's kernels round.
FORCED = "The capital of France is Paris."
FORCED_FORMAT = {"type": "string", "enum": [FORCED]}


_opened: list[ollama.Client] = []


def client(server: RunningServer, **kwargs: Any) -> ollama.Client:
    opened = ollama.Client(host=server.url, timeout=120, **kwargs)
    _opened.append(opened)
    return opened


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def test_generate_streams_ndjson_lines_ending_with_counts_and_durations(
    server: RunningServer,
) -> None:
    chunks = list(
        client(server).generate(
            model=NAME,
            prompt="Where is Paris?",
            stream=True,
            format=FORCED_FORMAT,
            options={"temperature": 0},
        )
    )
    assert all(not chunk.done for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.done and last.done_reason == "stop"
    assert json.loads("".join(chunk.response for chunk in chunks)) == FORCED
    assert last.eval_count is not None and last.eval_count > 1
    assert last.prompt_eval_count is not None and last.prompt_eval_count > 3
    assert last.total_duration and last.eval_duration and last.prompt_eval_duration
    assert last.total_duration >= last.eval_duration + last.prompt_eval_duration


def test_generate_without_streaming_answers_one_object_with_the_same_counts(
    server: RunningServer,
) -> None:
    ask = {
        "model": NAME,
        "prompt": "Where is Paris?",
        "format": FORCED_FORMAT,
        "options": {"temperature": 0},  # one way to spell the forced string, both times
    }
    streamed = list(client(server).generate(**ask, stream=True))
    whole = client(server).generate(**ask, stream=False)
    assert whole.done and json.loads(whole.response) == FORCED
    assert whole.eval_count == streamed[-1].eval_count
    assert whole.prompt_eval_count == streamed[-1].prompt_eval_count


def test_generate_sends_ndjson_as_its_media_type(server: RunningServer) -> None:
    body = {"model": NAME, "prompt": "Hi", "options": {"num_predict": 3}}
    with server.client.stream("POST", "/api/generate", json=body) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert lines[-1]["done"] is True
    assert lines[-1]["eval_count"] <= 3


def test_num_predict_bounds_the_answer(server: RunningServer) -> None:
    answer = client(server).generate(
        model=NAME, prompt="Count from one to fifty:", options={"num_predict": 4}
    )
    assert answer.eval_count is not None and answer.eval_count <= 4
    assert answer.done_reason == ("length" if answer.eval_count == 4 else "stop")


def test_chat_answers_in_the_message_and_streams_the_same_reply(server: RunningServer) -> None:
    messages = [{"role": "user", "content": "Name the capital of France."}]
    greedy = {"temperature": 0}
    whole = client(server).chat(model=NAME, messages=messages, format=FORCED_FORMAT, options=greedy)
    assert whole.message.role == "assistant"
    assert json.loads(whole.message.content) == FORCED
    parts = list(
        client(server).chat(
            model=NAME, messages=messages, format=FORCED_FORMAT, options=greedy, stream=True
        )
    )
    assert "".join(part.message.content for part in parts) == whole.message.content
    assert parts[-1].done and parts[-1].eval_count == whole.eval_count


@pytest.mark.parametrize("name", [NAME, DEFAULT_ID])
def test_answers_name_the_model_as_the_request_did(server: RunningServer, name: str) -> None:
    options = {"num_predict": 2}
    assert client(server).generate(model=name, prompt="Hi", options=options).model == name
    parts = client(server).chat(
        model=name, messages=[{"role": "user", "content": "Hi"}], options=options, stream=True
    )
    assert {part.model for part in parts} == {name}


def test_chat_format_json_schema_gives_an_object_that_validates(server: RunningServer) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": ["Paris", "Lyon"]},
            "population_millions": {"type": "integer"},
        },
        "required": ["city", "population_millions"],
    }
    reply = client(server).chat(
        model=NAME,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        format=schema,
        options={"temperature": 0, "num_predict": 60},
    )
    parsed = json.loads(reply.message.content)
    assert parsed["city"] in ("Paris", "Lyon")
    assert isinstance(parsed["population_millions"], int)


def test_a_request_naming_only_the_model_loads_it_and_answers_at_once(
    server: RunningServer,
) -> None:
    answer = client(server).generate(model=NAME)
    assert answer.done and answer.done_reason == "load" and answer.response == ""
    chatted = client(server).chat(model=NAME, messages=[])
    assert chatted.done and chatted.done_reason == "load"


def test_tags_lists_the_local_models_with_details_from_the_gguf(
    server: RunningServer, model_path: Path
) -> None:
    listed = {model.model: model for model in client(server).list().models}
    smol = listed[NAME]
    assert smol.size == model_path.stat().st_size
    assert smol.details is not None
    facts = gguf_facts(model_path)
    assert smol.details.family == facts.architecture == "llama"
    assert smol.details.quantization_level == "Q4_1"
    assert smol.details.parameter_size is not None and smol.details.parameter_size.endswith("M")
    assert smol.digest is not None and len(smol.digest) == 64


def test_show_describes_the_model_from_its_header(server: RunningServer) -> None:
    shown = client(server).show(NAME)
    assert shown.template is not None and "<|im_start|>" in shown.template
    assert shown.details is not None and shown.details.format == "gguf"
    assert shown.modelinfo is not None
    assert shown.modelinfo["llama.context_length"] == 8192
    assert shown.capabilities is not None and "completion" in shown.capabilities


def test_ps_lists_the_loaded_model_with_its_context(server: RunningServer) -> None:
    running = client(server).ps().models
    assert [model.model for model in running] == [NAME]
    assert running[0].context_length == server.engine_stats().context_size // TEST_SETTINGS.parallel
    assert running[0].size is not None and running[0].size > 0
    assert running[0].size_vram == 0  # a CPU build keeps everything in RAM


def test_version_answers(server: RunningServer) -> None:
    reply = server.client.get("/api/version")
    assert reply.status_code == 200 and reply.json()["version"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "no-such-model", "prompt": "Hi"}, 404, "no-such-model"),
        ({"model": NAME, "prompt": "Hi", "images": ["aGk="]}, 400, "images"),
        ({"model": NAME, "prompt": "Hi", "tools": [{"function": {"name": "f"}}]}, 400, "tools"),
        ({"model": NAME, "prompt": "Hi", "keep_alive": "soon"}, 400, "keep_alive"),
        ({"model": NAME, "prompt": "Hi", "options": {"temperature": "hot"}}, 400, "temperature"),
    ],
)
def test_bad_requests_get_ollamas_error_shape_and_the_server_keeps_serving(
    server: RunningServer, body: dict[str, Any], status: int, words: str
) -> None:
    reply = server.client.post("/api/generate", json=body)
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"error"} and words in reply.json()["error"]
    if "tools" not in body:  # the client itself has no tools on generate
        with pytest.raises(ollama.ResponseError) as raised:
            client(server).generate(**body)
        assert raised.value.status_code == status
    assert client(server).generate(model=NAME, prompt="Hi", options={"num_predict": 2}).done


def test_pull_reports_progress_then_success_and_delete_removes_the_file(
    make_server: ServerFactory, hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    hub.add("test-owner/SmolLM2-GGUF", SMOL_FILE, model_path)
    server = make_server(registry_=hub_registry(), files=hub_files(hub, tmp_path))
    steps = list(client(server).pull("smollm2-hub", stream=True))
    statuses = [step.status for step in steps]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses
    sized = [step for step in steps if step.total]
    assert sized and sized[-1].completed == sized[-1].total == model_path.stat().st_size
    assert [c.completed for c in sized] == sorted(c.completed or 0 for c in sized)
    cached = list((tmp_path / "cache").rglob(SMOL_FILE))
    assert cached, "the pulled file is in the cache"
    assert "smollm2-hub:latest" in {model.model for model in client(server).list().models}

    assert client(server).delete("smollm2-hub").status == "success"
    assert not any(path.exists() for path in cached)
    with pytest.raises(ollama.ResponseError) as again:
        client(server).delete("smollm2-hub")
    assert again.value.status_code == 404


def test_a_packaged_model_is_not_deleted(server: RunningServer, model_path: Path) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client(server).delete(NAME)
    assert refused.value.status_code == 409
    assert "package" in str(refused.value)
    assert model_path.exists()


def test_ollama_routes_need_the_api_key_like_the_others(make_server: ServerFactory) -> None:
    keyed = make_server(msgspec.structs.replace(TEST_SETTINGS, api_keys=("k1",)))
    refused = keyed.client.get("/api/tags")
    assert refused.status_code == 401 and set(refused.json()) == {"error"}
    allowed = client(keyed, headers={"Authorization": "Bearer k1"}).list()
    assert NAME in {model.model for model in allowed.models}
    metrics = httpx.get(f"{keyed.url}/metrics", headers={"Authorization": "Bearer k1"}).text
    assert 'route="/api/tags"' in metrics


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Lyon"]}},
            "required": ["city"],
        },
    },
}


def test_a_tool_round_trip_answers_after_the_tools_result(server: RunningServer) -> None:
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    first = client(server).chat(
        model=NAME, messages=[ask], tools=[WEATHER], options={"num_predict": 60}
    )
    # The model decides whether to call; a call it makes is held to the tool's schema (one
    # cut off by num_predict has the arguments written so far).
    for call in (first.message.tool_calls or []) if first.done_reason == "stop" else []:
        assert call.function.name == "get_weather"
        assert call.function.arguments["city"] in ("Paris", "Lyon")
    history = [
        ask,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"},
    ]
    answer = client(server).chat(model=NAME, messages=history, options={"num_predict": 20})
    assert answer.done and answer.message.role == "assistant"
    assert answer.message.content or answer.message.tool_calls


def test_a_tool_message_that_answers_no_call_is_refused(server: RunningServer) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client(server).chat(
            model=NAME,
            messages=[
                {"role": "user", "content": "Hi"},
                {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"},
            ],
        )
    assert refused.value.status_code == 400 and "tool message" in str(refused.value)


def test_tools_are_part_of_the_prompt_and_show_says_the_model_takes_them(
    server: RunningServer,
) -> None:
    plain = client(server).chat(
        model=NAME, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 1}
    )
    with_tools = client(server).chat(
        model=NAME,
        messages=[{"role": "user", "content": "Hi"}],
        tools=[WEATHER],
        options={"num_predict": 1},
    )
    assert (with_tools.prompt_eval_count or 0) > (plain.prompt_eval_count or 0)
    shown = client(server).show(NAME)
    assert shown.capabilities is not None and "tools" in shown.capabilities


def test_think_is_accepted_and_thinking_stays_apart_from_the_answer(server: RunningServer) -> None:
    answer = client(server).chat(
        model=NAME,
        messages=[{"role": "user", "content": "Hi"}],
        think=True,
        options={"num_predict": 8},
    )
    assert answer.done
    assert "<think>" not in answer.message.content


def test_show_gives_a_model_not_loaded_the_context_a_load_would_get(
    make_server: ServerFactory,
) -> None:
    # Under --ctx auto the context is what memory holds at load: less than the trained 8,192
    # for 8 slots in 1.5 GiB, more than the 4,096 floor.
    from locallab_gguf.settings import Settings
    from tests.support.nvml_standin import MIB, NvmlStandIn, simulated_probe

    cramped = simulated_probe(NvmlStandIn([]), offload_supported=False, available_ram=1536 * MIB)
    settings = Settings(threads=2, threads_batch=2, parallel=8, rate_limit=False, cache_ram=0)
    server = make_server(settings, hardware=cramped, initial_model=None, wait_for=None)
    shown = server.client.post("/api/show", json={"model": NAME})
    assert shown.status_code == 200, shown.text
    num_ctx = int(shown.json()["parameters"].removeprefix("num_ctx "))
    assert 4096 < num_ctx < 8192
    loaded = server.client.post(
        "/api/generate", json={"model": NAME, "prompt": "Hi", "options": {"num_predict": 1}}
    )
    assert loaded.status_code == 200, loaded.text
    assert client(server).ps().models[0].context_length == num_ctx
