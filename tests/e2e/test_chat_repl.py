"""`locallab-gguf chat`, driven through a pseudo-terminal as a person would use it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_ID
from tests.support.reference import Answer, Reference
from tests.support.servers import RunningServer

CLI = str(Path(sys.executable).parent / "locallab-gguf")
QUESTION = "What is the capital of France? Answer in one sentence."
PROMPT = "you> "
RATE = r"\[(\d+) tokens in [\d.]+ s, [\d.]+ tokens/s\]"


def spawn(*args: str, timeout: float = 60, **env: str) -> pexpect.spawn:
    child = pexpect.spawn(
        CLI, ["chat", *args], encoding="utf-8", timeout=timeout, env={**os.environ, **env}
    )
    child.setwinsize(40, 200)  # long lines stay whole, so the text can be matched
    return child


@pytest.fixture(scope="module")
def answer(reference: Reference) -> Answer:
    """The greedy answer to QUESTION on this machine."""
    return reference.chat([{"role": "user", "content": QUESTION}])


def on_terminal(text: str) -> str:
    """`text` as the pseudo-terminal shows it: each newline becomes CR LF."""
    return text.replace("\n", "\r\n")


@pytest.fixture
def chat(server: RunningServer) -> Iterator[pexpect.spawn]:
    child = spawn("--url", server.url, "--temperature", "0")
    child.expect(f"Chatting with {DEFAULT_ID}")
    child.expect_exact(PROMPT)
    yield child
    child.close(force=True)


def prompt_tokens_so_far(server: RunningServer) -> float:
    text = server.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "locallab_prompt_tokens_total":
                return sample.value
    return 0.0


def ask(child: pexpect.spawn, line: str) -> int:
    """Send a line, wait for the reply's speed line; returns its token count."""
    child.sendline(line)
    child.expect(RATE)
    tokens = int(child.match.group(1))
    child.expect_exact(PROMPT)
    return tokens


def test_replies_stream_and_show_their_speed(chat: pexpect.spawn, answer: Answer) -> None:
    chat.sendline(QUESTION)
    chat.expect_exact(on_terminal(answer.text))
    chat.expect(RATE)
    assert chat.match.group(1) == str(answer.completion_tokens)
    chat.expect_exact(PROMPT)
    chat.sendline("/exit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


def test_the_conversation_is_kept_until_reset(
    chat: pexpect.spawn, server: RunningServer, answer: Answer
) -> None:
    start = prompt_tokens_so_far(server)
    ask(chat, QUESTION)
    first = prompt_tokens_so_far(server) - start
    assert first == answer.prompt_tokens
    ask(chat, "And of Italy?")
    second = prompt_tokens_so_far(server) - start - first
    assert second > first + answer.completion_tokens  # the first question and answer came along
    chat.sendline("/reset")
    chat.expect_exact("(conversation cleared)")
    chat.expect_exact(PROMPT)
    ask(chat, QUESTION)
    assert prompt_tokens_so_far(server) - start - first - second == first


def test_system_prompt_commands_and_end_of_input(
    chat: pexpect.spawn, server: RunningServer, answer: Answer
) -> None:
    chat.sendline("/system You are a pirate. Answer like one.")
    chat.expect_exact("(system prompt set)")
    chat.expect_exact(PROMPT)
    start = prompt_tokens_so_far(server)
    ask(chat, QUESTION)
    with_pirate = prompt_tokens_so_far(server) - start
    assert with_pirate != answer.prompt_tokens  # the model's default system prompt was replaced
    chat.sendline("/nonsense")
    chat.expect_exact("unknown command /nonsense")
    chat.expect_exact(PROMPT)
    chat.sendeof()
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


def test_an_unreachable_server_is_reported(tmp_path: Path) -> None:
    child = spawn("--url", "http://127.0.0.1:9")
    child.expect("cannot reach http://127.0.0.1:9")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2


def test_a_wrong_model_id_gets_the_servers_answer(server: RunningServer) -> None:
    child = spawn("--url", server.url, "--model", "gpt-4o")
    child.expect_exact(PROMPT)
    child.sendline("Hello")
    child.expect("error: 404: [^\r\n]*'gpt-4o'")
    child.expect_exact(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close(force=True)


@pytest.mark.slow
def test_without_a_url_the_model_starts_in_process(answer: Answer) -> None:
    # With keys, as `serve` reads them: the chat sends the admin key without its prefix.
    child = spawn("--temperature", "0", timeout=180, LOCALLAB_API_KEYS="user:u1,admin:a1")
    child.expect(f"Chatting with {DEFAULT_ID} at http://127.0.0.1:")
    child.expect_exact(PROMPT)
    child.sendline(QUESTION)
    child.expect_exact(on_terminal(answer.text))
    child.expect(RATE)
    child.expect_exact(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
